"""Regenerate inference_pb2.py and inference_pb2.pyi from inference.proto (messages only).

The generated modules are checked in, so neither installing nor serving needs protoc. Run this
after editing the .proto, with a grpcio-tools whose protobuf matches the runtime's major version
(the generated code refuses an older protobuf runtime): `pip install grpcio-tools 'protobuf<7'`.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # the repository: module paths in the output start there
PROTO = Path(__file__).with_name("inference.proto").relative_to(ROOT)


def main() -> int:
    from grpc_tools import protoc  # a build-time tool, not a dependency

    return protoc.main(
        ["protoc", f"-I{ROOT}", f"--python_out={ROOT}", f"--pyi_out={ROOT}",
         str(ROOT / PROTO)]
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
