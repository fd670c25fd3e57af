"""Run by tests/test_distributed.py under torchrun (2 gloo processes): generate on FSDP2-sharded
weights with process 0 decoding 2 tokens and process 1 decoding 6, first in step (synced_gpus, what
the trainer does), then without (each forward being a collective, they must fall out of step)."""

import os
import sys
import time

import numpy as np
import torch

from tempsamp.models import qwen_vl
from tempsamp.train.parallel import Parallel

parallel = Parallel("fsdp", timeout_s=10)
model, processor = qwen_vl.load_policy(sys.argv[1], device="cpu")
parallel.prepare(model, lambda params: torch.optim.AdamW(params, lr=1e-3), max_grad_norm=1.0)
prompt = qwen_vl.build_prompt(processor, "hello", np.zeros((2, 56, 56, 3), np.uint8), 2.0)
batch = qwen_vl.merge_prompts([prompt], qwen_vl.pad_token_id(processor))
for synced in (True, False):
    started = time.time()
    try:
        with torch.no_grad(), parallel.generation():
            out = qwen_vl.generate_batch(parallel.policy, processor, batch, max_new_tokens=2 if parallel.rank == 0 else 6,
                                         do_sample=True, num_samples=2, seeds=[1], synced_gpus=synced)
        result = f"lengths {[len(ids) for ids in out.ids]}"
    except RuntimeError as err:
        result = f"failed: {str(err)[:80]}"
    # one write of the whole line: two processes share the pipe, and print() may write the text and
    # its newline separately (unbuffered stdout), which interleaves their lines
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), f"rank {parallel.rank} synced={synced}: {result}\n".encode())
