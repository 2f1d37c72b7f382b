"""The peers' model servers for benchmarks/peers.py, each the smallest idiomatic onnxruntime runtime.

Written into the peer's own virtualenv and run there (never imported by quantship): `KSERVE` is a
`kserve.Model` with a sync `predict`, started with one worker and latency logging off; `MLSERVER`
is an MLServer runtime with `parallel_workers: 0` (the default 1 crashes with uvloop 0.23 here).
Both run one onnxruntime session with PEER_THREADS intra-op threads (1 unless the benchmark says),
like quantship in the benchmark.
"""

KSERVE = """
import os, sys
import onnxruntime as ort
import kserve
from kserve import InferOutput, InferRequest, InferResponse
from kserve.utils.utils import generate_uuid


class OnnxModel(kserve.Model):
    def __init__(self, name, path):
        super().__init__(name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("PEER_THREADS", 1))
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.names = [output.name for output in self.session.get_outputs()]
        self.ready = True

    def predict(self, payload: InferRequest, headers=None, response_headers=None):
        inputs = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        outputs = []
        for name, value in zip(self.names, self.session.run(None, inputs)):
            datatype = "INT64" if value.dtype.kind == "i" else "FP32"
            output = InferOutput(name=name, shape=list(value.shape), datatype=datatype)
            output.set_data_from_numpy(value, binary_data=False)
            outputs.append(output)
        response_id = payload.id or generate_uuid()  # KServe's REST layer refuses a response without one
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=response_id)


if __name__ == "__main__":
    model = OnnxModel(os.environ["PEER_MODEL_NAME"], os.environ["PEER_MODEL_PATH"])
    kserve.ModelServer().start([model])
"""

MLSERVER_RUNTIME = """
import os
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("PEER_THREADS", 1))
        path = self.settings.parameters.uri
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.names = [output.name for output in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        values = self.session.run(None, inputs)
        outputs = [NumpyCodec.encode_output(name, value) for name, value in zip(self.names, values)]
        return InferenceResponse(model_name=self.name, outputs=outputs)
"""
