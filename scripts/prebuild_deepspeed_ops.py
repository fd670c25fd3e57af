"""Compile DeepSpeed's CPU ops once, at set-up, so the first ZeRO run is not mostly compiling.

DeepSpeed is installed without prebuilt ops (DS_BUILD_OPS=0: no CUDA toolkit needed); on a CPU it
JIT-compiles its shared-memory all-reduce (about 2.5 min) at the first ZeRO run and its CPU Adam
(about 1.5 min) at the first ZeRO-Offload run. Both are cached under ~/.cache/torch_extensions
(TORCH_EXTENSIONS_DIR), where every later run finds them. On a GPU machine nothing is built here:
DeepSpeed builds its CUDA ops itself when a run first needs them.
"""

import os
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from deepspeed.accelerator import get_accelerator  # noqa: E402

if get_accelerator().device_name() != "cpu":
    print("prebuild_deepspeed_ops: not a CPU accelerator, nothing to build")
else:
    from deepspeed.ops.op_builder.cpu import CPUAdamBuilder, ShareMemCommBuilder

    for builder in (ShareMemCommBuilder(), CPUAdamBuilder()):
        start = time.perf_counter()
        builder.load(verbose=False)
        print(f"prebuild_deepspeed_ops: {builder.NAME} ready ({time.perf_counter() - start:.1f} s)")
