"""The pre-training check inside a torch.distributed job (FSDP2), on every rank.

Run it (CPU, gloo, 2 processes):

    torchrun --nproc_per_node 2 examples/distributed.py

Every rank builds the model, shards it with ``fully_shard``, and calls
``initdoctor.assert_healthy_init``: weight statistics come from each rank's shards (merged across
ranks, no full weight gathered), the probe runs through FSDP's own forward, rank 0 judges and every
rank gets the same report — or the same error, so no rank trains on a broken initialization.
"""

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import LlamaConfig, LlamaForCausalLM

import initdoctor


def main() -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)  # the same initial weights on every rank before sharding
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    report = initdoctor.assert_healthy_init(model, fail_on="error")  # on every rank
    if dist.get_rank() == 0:
        print(f"rank 0 of {dist.get_world_size()}: {report.summary.status}: {report.summary.message}")
    # ... the training loop starts here
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
