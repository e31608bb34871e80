"""Training losses: InfoNCE, SigLIP, VSE++ max-violation, ITM with hard negatives, pytorch-metric-learning adapter."""

from .contrastive import InfoNCELoss, MaxSimInfoNCELoss, MetricLearningLoss, SigLIPLoss, VSEPPLoss, gather_with_grad
from .cached import cached_backward, split_batch, supports_cached
from .itm import ITMLoss, JointLoss, mine_hard_negatives

LOSSES = {"infonce": InfoNCELoss, "siglip": SigLIPLoss, "vsepp": VSEPPLoss, "itm": ITMLoss, "joint": JointLoss, "maxsim": MaxSimInfoNCELoss}

__all__ = ["InfoNCELoss", "MaxSimInfoNCELoss", "SigLIPLoss", "VSEPPLoss", "MetricLearningLoss", "ITMLoss", "JointLoss", "mine_hard_negatives",
           "gather_with_grad", "LOSSES", "cached_backward", "split_batch", "supports_cached"]
