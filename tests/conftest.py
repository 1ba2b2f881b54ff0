import os

# tests never reach a model hub; set before transformers/huggingface_hub are imported
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))
