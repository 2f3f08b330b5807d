"""Where the funnel's models run, all behind one interface: ``signature(model)``
(name -> TensorSpec) and ``predict(model, arrays)`` by model name.

- ``InProcessBackend``: the pushed SavedModels, loaded in this process;
- ``GrpcBackend``: TF Serving's ``PredictionService`` over gRPC
  (``tensorflow-serving-api``), signatures from ``GetModelMetadata``;
- ``RestBackend``: TF Serving's REST API (``/v1/models/<name>:predict``, columnar
  "inputs"), signatures from ``/v1/models/<name>/metadata``; also KServe's v1
  protocol, one URL per model;
- ``OpenInferenceBackend``: KServe's v2 protocol, the Open Inference Protocol
  (``POST <model URL>/infer``, tensors as flat data with shape and datatype),
  signatures from ``GET <model URL>``, as Triton and KServe's v2 runtimes serve it.

TensorFlow and the serving protos are imported when a backend is made, not
with this module.
"""

import base64
import contextlib
import json
import urllib.request

import numpy as np

from recsys.core import storage
from recsys.core.contracts import MODELS, SIGNATURE
from recsys.serving.serving_root import served_version


class InProcessBackend:
    """SavedModels called in this process: ``model_dirs`` maps each model name to its
    directory (``from_serving_root`` takes the served versions)."""

    def __init__(self, model_dirs: dict[str, str], versions: dict[str, int] | None = None):
        import tensorflow as tf

        self.versions = versions or {}
        # TensorFlow reads gs:// itself but has no s3:// filesystem here: models in a
        # bucket are copied to local disk first, kept for this backend's lifetime.
        self._local = contextlib.ExitStack()
        self._functions = {
            name: tf.saved_model.load(
                self._local.enter_context(storage.local_copy(directory))
            ).signatures[SIGNATURE]
            for name, directory in model_dirs.items()
        }

    @classmethod
    def of_signatures(cls, functions: dict[str, object]) -> "InProcessBackend":
        """A backend over serving signatures already loaded by the caller (evaluate
        loads each model once and scores it both ways)."""
        backend = cls({})
        backend._functions = dict(functions)
        return backend

    @classmethod
    def from_serving_root(cls, serving_root: str):
        """The versions ``models.config`` serves, as TF Serving would load them."""
        versions = {name: served_version(serving_root, name) for name in MODELS}
        return cls(
            {
                name: storage.join(serving_root, name, str(version))
                for name, version in versions.items()
            },
            versions,
        )

    def signature(self, model: str) -> dict:
        return self._functions[model].structured_input_signature[1]

    def close(self) -> None:
        """Delete the local copies of models read from a bucket."""
        self._local.close()

    def predict(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        signature = self.signature(model)
        outputs = self._functions[model](
            **{name: tf.constant(values, signature[name].dtype) for name, values in inputs.items()}
        )
        return {name: value.numpy() for name, value in outputs.items()}


def _spec_from_tensor_info(name: str, dtype, shape) -> "object":
    import tensorflow as tf

    return tf.TensorSpec(shape, tf.dtypes.as_dtype(dtype), name=name)


class GrpcBackend:
    """TF Serving over gRPC: ``PredictionService.Predict``, with each model's input
    signature read once from ``GetModelMetadata``."""

    def __init__(self, target: str, timeout_seconds: float = 1.0):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.channel = grpc.insecure_channel(target)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.timeout = timeout_seconds
        self._signatures = {}

    def signature(self, model: str) -> dict:
        from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

        if model not in self._signatures:
            request = get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=model_pb2.ModelSpec(name=model), metadata_field=["signature_def"]
            )
            response = self.stub.GetModelMetadata(request, timeout=self.timeout * 10)
            signatures = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(signatures)
            inputs = signatures.signature_def[SIGNATURE].inputs
            self._signatures[model] = {
                name: _spec_from_tensor_info(
                    name,
                    info.dtype,
                    None
                    if info.tensor_shape.unknown_rank
                    else [d.size if d.size >= 0 else None for d in info.tensor_shape.dim],
                )
                for name, info in inputs.items()
            }
        return self._signatures[model]

    def predict(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf
        from tensorflow_serving.apis import model_pb2, predict_pb2

        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model, signature_name=SIGNATURE)
        )
        signature = self.signature(model)
        for name, values in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(values, signature[name].dtype))
        response = self.stub.Predict(request, timeout=self.timeout)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def close(self):
        self.channel.close()


class RestBackend:
    """TF Serving's REST API: ``POST <url>/v1/models/<name>:predict`` in the columnar
    format, signatures from ``GET <url>/v1/models/<name>/metadata``. KServe's v1
    protocol on its TensorFlow runtime is the same API with one address per model
    (an InferenceService each): ``model_urls`` maps each model to its
    ``.../v1/models/<served name>`` URL instead."""

    def __init__(self, url: str = "", timeout_seconds: float = 1.0, model_urls: dict | None = None):
        self.url = url.rstrip("/")
        self.model_urls = {name: u.rstrip("/") for name, u in (model_urls or {}).items()}
        self.timeout = timeout_seconds
        self._signatures = {}

    def _model_url(self, model: str) -> str:
        if self.model_urls:
            if model not in self.model_urls:
                raise ValueError(f"no URL for model {model!r}: have {sorted(self.model_urls)}")
            return self.model_urls[model]
        return f"{self.url}/v1/models/{model}"

    def _call(self, url: str, body: dict | None = None, timeout: float | None = None) -> dict:
        return _json_call(url, body, timeout or self.timeout)

    def _metadata(self, model: str) -> dict:
        """{"inputs": {name: TensorSpec}, "outputs": {name: numpy dtype}}, fetched once."""
        from tensorflow.core.framework import types_pb2

        if model not in self._signatures:
            metadata = self._call(f"{self._model_url(model)}/metadata", timeout=self.timeout * 10)
            signature = metadata["metadata"]["signature_def"]["signature_def"][SIGNATURE]
            dtype = lambda info: types_pb2.DataType.Value(info["dtype"])  # noqa: E731
            self._signatures[model] = {
                "inputs": {
                    name: _spec_from_tensor_info(
                        name,
                        dtype(info),
                        None
                        if info["tensor_shape"].get("unknown_rank")
                        else [
                            int(d["size"]) if int(d["size"]) >= 0 else None
                            for d in info["tensor_shape"].get("dim", [])
                        ],
                    )
                    for name, info in signature["inputs"].items()
                },
                "outputs": {
                    name: _numpy_dtype(dtype(info)) for name, info in signature["outputs"].items()
                },
            }
        return self._signatures[model]

    def signature(self, model: str) -> dict:
        return self._metadata(model)["inputs"]

    def predict(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        body = {
            "signature_name": SIGNATURE,
            "inputs": {name: _json_values(values) for name, values in inputs.items()},
        }
        outputs = self._call(f"{self._model_url(model)}:predict", body)["outputs"]
        dtypes = self._metadata(model)["outputs"]
        return {name: np.asarray(values, dtype=dtypes[name]) for name, values in outputs.items()}


def _json_call(url: str, body: dict | None, timeout: float) -> dict:
    """GET ``url`` (``body`` None) or POST ``body`` to it, as JSON both ways."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _numpy_dtype(data_type: int):
    import tensorflow as tf

    dtype = tf.dtypes.as_dtype(data_type)
    return object if dtype == tf.string else dtype.as_numpy_dtype


def _json_values(values: np.ndarray):
    """JSON for a tensor: strings as text (TF Serving wants {"b64": ...} only for
    bytes that are not UTF-8, which ids and categories never are)."""
    if values.dtype == object:
        return (
            [_json_values(row) for row in values]
            if values.ndim > 1
            else [
                v if isinstance(v, str) else {"b64": base64.b64encode(v).decode()} for v in values
            ]
        )
    return values.tolist()


# The Open Inference Protocol's tensor datatypes and TensorFlow's.
V2_DATATYPES = {
    "BOOL": "bool",
    "INT32": "int32",
    "INT64": "int64",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "string",
}


class OpenInferenceBackend:
    """KServe's v2 protocol (the Open Inference Protocol's REST binding): each model's
    URL is ``.../v2/models/<its name>``; ``GET`` it for the inputs' names, datatypes
    and shapes, ``POST .../infer`` with ``{"inputs": [{name, shape, datatype, data}]}``
    (data flat, row-major; strings as text) for ``{"outputs": [...]}`` alike."""

    def __init__(self, model_urls: dict[str, str], timeout_seconds: float = 1.0):
        self.model_urls = {name: url.rstrip("/") for name, url in model_urls.items()}
        self.timeout = timeout_seconds
        self._metadata = {}

    def _call(self, url: str, body: dict | None = None, timeout: float | None = None) -> dict:
        return _json_call(url, body, timeout or self.timeout)

    def _url(self, model: str) -> str:
        if model not in self.model_urls:
            raise ValueError(f"no URL for model {model!r}: have {sorted(self.model_urls)}")
        return self.model_urls[model]

    def _inputs(self, model: str) -> dict[str, dict]:
        if model not in self._metadata:
            metadata = self._call(self._url(model), timeout=self.timeout * 10)
            self._metadata[model] = {tensor["name"]: tensor for tensor in metadata["inputs"]}
        return self._metadata[model]

    def signature(self, model: str) -> dict:
        return {
            name: _spec_from_tensor_info(
                name,
                V2_DATATYPES[tensor["datatype"]],
                [d if d >= 0 else None for d in tensor["shape"]],
            )
            for name, tensor in self._inputs(model).items()
        }

    def predict(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        declared = self._inputs(model)
        body = {
            "inputs": [
                {
                    "name": name,
                    "shape": list(values.shape),
                    "datatype": declared[name]["datatype"],
                    "data": _json_values(values.reshape(-1)),
                }
                for name, values in inputs.items()
            ]
        }
        outputs = self._call(f"{self._url(model)}/infer", body)["outputs"]
        return {
            tensor["name"]: np.asarray(
                tensor["data"],
                dtype=object if tensor["datatype"] == "BYTES" else V2_DATATYPES[tensor["datatype"]],
            ).reshape(tensor["shape"])
            for tensor in outputs
        }


BACKEND_SPECS = (
    "in-process, grpc:HOST:PORT, rest:http://HOST:PORT (TF Serving) or "
    "kserve-v1:retrieval=URL,ranking=URL (an InferenceService per model, each URL "
    "ending /v1/models/<its name>) or kserve-v2:retrieval=URL,ranking=URL (KServe's "
    "v2 protocol, each URL ending /v2/models/<its name>)"
)


def backend_target(spec: str) -> tuple[str, object]:
    """(kind, target) of a remote backend spec (``BACKEND_SPECS``, but in-process):
    the address, or for kserve-v1 and kserve-v2 each model's URL; a ValueError says
    what is wrong."""
    kind, _, target = spec.partition(":")
    if kind in ("grpc", "rest") and target:
        return kind, target
    if kind in ("kserve-v1", "kserve-v2") and target:
        urls = dict(part.partition("=")[::2] for part in target.split(","))
        if not urls or any(not url.startswith(("http://", "https://")) for url in urls.values()):
            raise ValueError(f"backend {spec!r}: each model needs model=http(s)://URL")
        return kind, urls
    raise ValueError(f"backend {spec!r}: use {BACKEND_SPECS}")


def remote_backend(spec: str):
    """The client of a remote backend spec (``backend_target``)."""
    kind, target = backend_target(spec)
    if kind == "grpc":
        return GrpcBackend(target)
    if kind == "rest":
        return RestBackend(target)
    if kind == "kserve-v1":
        return RestBackend(model_urls=target)
    return OpenInferenceBackend(target)
