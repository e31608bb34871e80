"""Run by tests with torchrun (2 CPU processes, gloo) or plainly (1 process): a few training steps, weights saved."""

import sys

import torch

from xmodal.data.synthetic import all_caption_texts, generate
from xmodal.losses import InfoNCELoss
from xmodal.models.tiny import build_tiny_model
from xmodal.train import TrainConfig, Trainer, init_distributed_from_env

out, batch_size = sys.argv[1], int(sys.argv[2])
micro_batch = int(sys.argv[3]) if len(sys.argv) > 3 else None  # cached gradients (GradCache) in chunks of this size
init_distributed_from_env()
torch.set_num_threads(1)
splits = generate(n_train=64, n_val=1, n_test=1, n_unseen=1, seed=0)
model = build_tiny_model("clip", None, extra_texts=all_caption_texts(splits), seed=0)
cfg = TrainConfig(output_dir=f"{out}/run", max_steps=3, batch_size=batch_size, lr=1e-3, warmup_steps=1,
                  checkpoint_every=100, seed=0, amp="none", micro_batch=micro_batch)
class GradRecorder(Trainer):
    """Keeps the (rank-averaged) gradients of the first optimiser step: compared directly, since Adam turns
    float noise in near-zero gradients into full-size steps."""

    first = None

    def _all_reduce_grads(self):
        super()._all_reduce_grads()
        if self.first is None:
            self.first = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}


trainer = GradRecorder(model, InfoNCELoss(model), splits["train"], cfg)
trainer.train(resume=False, show_progress=False)
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
torch.save(model.state_dict(), f"{out}/weights-rank{rank}.pt")
torch.save(trainer.first, f"{out}/grads-rank{rank}.pt")
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
