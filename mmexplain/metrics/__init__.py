"""Grounding and faithfulness metrics for saliency maps: tensors in, tensors (or plain numbers) out.

Every function takes one map ``(H, W)`` (any non-negative float map: a Grad-CAM map in
[0, 1], ``|guided gradient|`` summed over channels, a baseline map) and ground truth at
the same resolution: a bool mask ``(H, W)`` or a pixel box ``(x0, y0, x1, y1)`` with
x1/y1 exclusive (as ``mx.world.Obj.box``).

Protocols (see DESIGN.md, "Protocols"):

* Pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop",
  ECCV 2016): a hit when the map's maximum lies inside the referred object's mask,
  optionally with a tolerance of ``tolerance`` pixels (the paper uses 15 px on
  ~224 px images; the default here is 0, i.e. exactly inside).
* Energy ratio (Grad-CAM paper, Sec. 8 / captioning vs DenseCap boxes): mean map inside
  the mask / mean map outside; a uniform map gives 1.0.
* Discrimination: more energy (mean map value) inside the referred object than inside
  another object of the scene.
* Weakly-supervised localisation (Grad-CAM paper, Sec. 4.1): binarise at 15% of the
  map's maximum, box the largest connected segment, a hit when IoU >= 0.5 with the
  ground-truth box.
* Deletion / insertion (Petsiuk et al., "RISE", BMVC 2018): remove (or insert) pixels
  in order of decreasing saliency and take the area under the curve of the target's
  probability.
* ROAD (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution
  Methods", ICML 2022): remove pixels by noisy linear imputation (each removed pixel is
  the weighted mean of its 8 neighbours, solved jointly as a sparse linear system, plus
  Gaussian noise) so that the perturbed image stays close to the data, and read the
  target's probability most-relevant-first (MoRF, lower is better) and
  least-relevant-first (LeRF, higher is better).
* Map similarity for sanity checks (Adebayo et al., "Sanity Checks for Saliency Maps",
  NeurIPS 2018): Spearman rank correlation (average ranks for ties, as
  ``scipy.stats.spearmanr``) and SSIM (Wang et al. 2004, 7 x 7 uniform window, as
  ``skimage.metrics.structural_similarity``).

Baseline maps: :func:`uniform_map`, :func:`center_prior`, :func:`random_map`.

Example:
    >>> import torch
    >>> from mmexplain import metrics
    >>> mask = torch.zeros(4, 4, dtype=torch.bool); mask[:2, :2] = True
    >>> m = torch.zeros(4, 4); m[0, 1] = 1.0
    >>> metrics.pointing_game(m, mask), metrics.energy_inside(m, mask)
    (True, 1.0)
    >>> metrics.energy_ratio(metrics.uniform_map(4, 4), mask)
    1.0
"""

from .faithfulness import ROAD, DeletionInsertion, deletion_insertion, gaussian_blur, noisy_linear_imputation, road
from .grounding import (
    center_prior, discrimination, energy_inside, energy_ratio, pointing_expected, pointing_game, random_map,
    uniform_map,
)
from .localization import box_iou, connected_components, largest_segment_box, localization
from .similarity import rank, spearman, ssim

__all__ = [
    "pointing_game",
    "pointing_expected",
    "energy_ratio",
    "energy_inside",
    "discrimination",
    "connected_components",
    "largest_segment_box",
    "box_iou",
    "localization",
    "DeletionInsertion",
    "deletion_insertion",
    "gaussian_blur",
    "noisy_linear_imputation",
    "ROAD",
    "road",
    "rank",
    "spearman",
    "ssim",
    "uniform_map",
    "center_prior",
    "random_map",
]

