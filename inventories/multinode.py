"""DeepSeek-V3 (671B, fp8) over two hosts of eight H100s: one Ray cluster, vLLM with tensor parallel
8 within each host and pipeline parallel 2 across them, behind one gateway.

    deepfleet-runtime plan /models/deepseek-v3 --gpus 8xH100-80GB --quantization fp8 --nodes 4
    #   fits on 2 hosts of 8 x H100-80GB (tensor parallel 8 x pipeline parallel 2) ...
    deepfleet plan inventories/multinode.py
    deepfleet up inventories/multinode.py

h100-a is the Ray head (its runtime serves the model, using h100-b's GPUs through Ray); h100-b is a
worker: it holds the model and runs a Ray worker, no runtime. The deploy asks the capacity planner
for the parallelism (group_data/multinode.py: `ray_head`). Every setting: group_data/multinode.py.
"""

gateways = [
    ("llm-gw", {"ssh_hostname": "10.0.2.10"}),
]

gpu_nodes = [
    ("h100-a", {"ssh_hostname": "10.0.2.21"}),
    ("h100-b", {"ssh_hostname": "10.0.2.22"}),
]
