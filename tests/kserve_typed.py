"""Read manifests with KServe's own typed models (run by tests/test_kserve.py with the
separate environment .venv-kserve, where the kserve package is installed).

Each YAML document of the files given is built into its typed model, field by
field: a field the model does not declare, a value of the wrong type or a missing
required field is an error naming the object and the field. Prints the kinds read,
as JSON.
"""

import json
import re
import sys

import kserve.models as kserve_models
import yaml
from kubernetes import client as kubernetes_models

KINDS = {"InferenceService": "V1beta1InferenceService"}
SCALARS = {"str": str, "int": int, "float": (int, float), "bool": bool, "object": object}


def build(data, kind: str, where: str):
    if data is None:
        return None
    # The generators behind the models spell containers two ways: list[T], List[T];
    # dict(str, T), Dict[str, T].
    listed = re.fullmatch(r"[lL]ist\[(.*)\]", kind)
    if listed:
        return [build(value, listed.group(1), f"{where}[{i}]") for i, value in enumerate(data)]
    mapped = re.fullmatch(r"dict\(str, (.*)\)|Dict\[str, (.*)\]", kind)
    if mapped:
        value_kind = mapped.group(1) or mapped.group(2)
        return {key: build(value, value_kind, f"{where}.{key}") for key, value in data.items()}
    if kind in SCALARS:
        if not isinstance(data, SCALARS[kind]) or (kind == "int" and isinstance(data, bool)):
            raise TypeError(f"{where}: expected {kind}, got {data!r}")
        return data
    model = getattr(kserve_models, kind, None) or getattr(kubernetes_models, kind)
    unknown = set(data) - set(model.attribute_map.values())
    if unknown:
        raise ValueError(f"{where}: {kind} has no field(s) {sorted(unknown)}")
    fields = {
        attribute: build(data[key], model.openapi_types[attribute], f"{where}.{key}")
        for attribute, key in model.attribute_map.items()
        if key in data
    }
    try:
        return model(**fields)
    except ValueError as error:  # a required field missing
        raise ValueError(f"{where}: {kind}: {error}") from None


def main(paths: list[str]) -> int:
    read = []
    for path in paths:
        with open(path) as handle:
            for document in yaml.safe_load_all(handle):
                kind = KINDS[document["kind"]]
                build(document, kind, f"{path}: {document['metadata']['name']}")
                read.append(kind)
    print(json.dumps(read))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
