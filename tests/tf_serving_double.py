"""A stand-in for TF Serving in tests: TF Serving's model server cannot be
installed here, so the clients in ``recsys.funnel`` are tested against this.

It serves the version of each model that the serving root's ``models.config``
pins (as TF Serving started with ``--model_config_file`` does), from the real
SavedModels, through the real protocols: a gRPC ``PredictionService`` built on
``tensorflow-serving-api``'s generated servicer (``Predict`` and
``GetModelMetadata``), and the REST endpoints ``POST /v1/models/<name>:predict``
(columnar "inputs") and ``GET /v1/models/<name>/metadata``; and KServe's v2
protocol (the Open Inference Protocol, which Triton and KServe's v2 runtimes
serve): ``GET /v2/models/<name>`` and ``POST /v2/models/<name>/infer``. A model
can be served under another name (``served_as``: KServe names it after its
InferenceService). Message layouts follow TF Serving's and the protocol's;
batching and config polling do not exist here (make a new ``ServedModels`` after
the config changes).
"""

import json
import os
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from recsys.serving.serving_root import served_version


class ServedModels:
    def __init__(self, serving_root: str, names: list[str]):
        self.functions, self.signature_maps, self.versions = {}, {}, {}
        for name in names:
            version = served_version(serving_root, name)
            directory = os.path.join(serving_root, name, str(version))
            self.functions[name] = tf.saved_model.load(directory).signatures["serving_default"]
            saved_model = saved_model_pb2.SavedModel()
            with open(os.path.join(directory, "saved_model.pb"), "rb") as handle:
                saved_model.ParseFromString(handle.read())
            self.signature_maps[name] = get_model_metadata_pb2.SignatureDefMap(
                signature_def={
                    "serving_default": saved_model.meta_graphs[0].signature_def["serving_default"]
                }
            )
            self.versions[name] = version
        self.requests = {name: 0 for name in names}

    def predict(self, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.requests[name] += 1
        function = self.functions[name]
        signature = function.structured_input_signature[1]
        outputs = function(
            **{key: tf.constant(value, signature[key].dtype) for key, value in inputs.items()}
        )
        return {key: value.numpy() for key, value in outputs.items()}


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, models: ServedModels):
        self.models = models

    def Predict(self, request, context):  # noqa: N802 (gRPC method name)
        name = request.model_spec.name
        if name not in self.models.functions:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found: {name}")
        outputs = self.models.predict(
            name, {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        )
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        response.model_spec.version.value = self.models.versions[name]
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        name = request.model_spec.name
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = self.models.versions[name]
        response.metadata["signature_def"].Pack(self.models.signature_maps[name])
        return response


def start_grpc(models: ServedModels) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(models), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


class JsonHandler(BaseHTTPRequestHandler):
    """Replies in JSON, quietly (both REST protocols)."""

    def _reply(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output quiet
        pass


def _rest_handler(models: ServedModels, served_as: dict[str, str]):
    """``served_as``: the name in the URL of each model served under another (KServe
    names a model after its InferenceService)."""

    class Handler(JsonHandler):
        def do_GET(self):  # noqa: N802
            name = self.path.removeprefix("/v1/models/").removesuffix("/metadata")
            name = served_as.get(name, name)
            if name not in models.functions:
                return self._reply(404, {"error": f"Servable not found: {name}"})
            signature_map = json_format.MessageToDict(
                models.signature_maps[name], preserving_proto_field_name=True
            )
            self._reply(
                200,
                {
                    "model_spec": {
                        "name": name,
                        "signature_name": "",
                        "version": str(models.versions[name]),
                    },
                    "metadata": {"signature_def": signature_map},
                },
            )

        def do_POST(self):  # noqa: N802
            name = self.path.removeprefix("/v1/models/").removesuffix(":predict")
            name = served_as.get(name, name)
            if name not in models.functions:
                return self._reply(404, {"error": f"Servable not found: {name}"})
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            outputs = models.predict(
                name,
                {
                    key: np.asarray(value, dtype=object) if _is_text(value) else np.asarray(value)
                    for key, value in body["inputs"].items()
                },
            )
            self._reply(200, {"outputs": {key: _jsonable(value) for key, value in outputs.items()}})

    return Handler


def _is_text(value) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, str)


def _jsonable(value: np.ndarray):
    if value.dtype == object:
        return np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v, otypes=[object])(
            value
        ).tolist()
    return value.tolist()


def start_rest(
    models: ServedModels, served_as: dict[str, str] | None = None
) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _rest_handler(models, served_as or {}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# TensorFlow's dtypes as the Open Inference Protocol names them.
V2_DATATYPE = {
    types_pb2.DT_BOOL: "BOOL",
    types_pb2.DT_INT32: "INT32",
    types_pb2.DT_INT64: "INT64",
    types_pb2.DT_FLOAT: "FP32",
    types_pb2.DT_DOUBLE: "FP64",
    types_pb2.DT_STRING: "BYTES",
}


def _v2_tensors(tensor_map) -> list[dict]:
    return [
        {
            "name": name,
            "datatype": V2_DATATYPE[info.dtype],
            "shape": [d.size for d in info.tensor_shape.dim],
        }
        for name, info in tensor_map.items()
    ]


def _v2_handler(models: ServedModels, served_as: dict[str, str]):
    """KServe's v2 protocol (Open Inference Protocol, REST): ``GET /v2/models/<name>``
    and ``POST /v2/models/<name>/infer``, as Triton or a KServe v2 runtime answers."""

    class Handler(JsonHandler):
        def _model(self, suffix: str) -> str:
            name = self.path.removeprefix("/v2/models/").removesuffix(suffix)
            return served_as.get(name, name)

        def do_GET(self):  # noqa: N802
            name = self._model("")
            if name not in models.functions:
                return self._reply(404, {"error": f"Model {name} not found"})
            signature = models.signature_maps[name].signature_def["serving_default"]
            self._reply(
                200,
                {
                    "name": name,
                    "versions": [str(models.versions[name])],
                    "platform": "tensorflow_savedmodel",
                    "inputs": _v2_tensors(signature.inputs),
                    "outputs": _v2_tensors(signature.outputs),
                },
            )

        def do_POST(self):  # noqa: N802
            name = self._model("/infer")
            if name not in models.functions:
                return self._reply(404, {"error": f"Model {name} not found"})
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            inputs = {
                tensor["name"]: np.asarray(
                    tensor["data"], dtype=object if tensor["datatype"] == "BYTES" else None
                ).reshape(tensor["shape"])
                for tensor in body["inputs"]
            }
            outputs = models.predict(name, inputs)
            signature = models.signature_maps[name].signature_def["serving_default"]
            self._reply(
                200,
                {
                    "model_name": name,
                    "outputs": [
                        {
                            "name": key,
                            "datatype": V2_DATATYPE[signature.outputs[key].dtype],
                            "shape": list(value.shape),
                            "data": _jsonable(value.reshape(-1)),
                        }
                        for key, value in outputs.items()
                    ],
                },
            )

    return Handler


def start_v2(
    models: ServedModels, served_as: dict[str, str] | None = None
) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _v2_handler(models, served_as or {}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
