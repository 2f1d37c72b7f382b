"""The Open Inference Protocol v2 gRPC messages: inference.proto and its generated inference_pb2."""
