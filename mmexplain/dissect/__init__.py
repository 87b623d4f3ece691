"""Network Dissection (Bau et al. 2017) and textual explanations (Selvaraju et al. Sec. 7).

``mx.dissect`` is this package and also its main function: ``mx.dissect(model, layer, data)``
calls :func:`dissect`, and ``mx.dissect.NeuronLabels`` reaches the rest.

Network Dissection names the channels ("units") of a convolutional layer by the
concept whose pixel masks their strongest activations overlap best:

* T_k: the level that unit k's activation exceeds on the top ``quantile`` (0.005) of
  all its activations over the dataset (every image, every position);
* M_k(x) = S_k(x) > T_k, where S_k(x) is the unit's map upsampled bilinearly to the
  concept masks' size;
* IoU_{k,c} = sum_x |M_k(x) ∩ L_c(x)| / sum_x |M_k(x) ∪ L_c(x)|, summed over the images
  x whose category of c is annotated;
* the unit's label is argmax_c IoU_{k,c}; it is a *detector* when that IoU > 0.04.

Modules, each using only those above it:

* ``quantile`` — :class:`StreamingQuantile`, the per-unit thresholds in fixed memory;
* ``iou`` — :func:`upsample_bilinear`, :func:`iou_counts` and the streaming IoU tally;
* ``labels`` — :class:`UnitLabel`, :class:`NeuronLabels` (JSON / ``tally.csv`` files);
* ``datasets`` — :class:`BrodenDataset`; ShapeWorld's is ``mx.world.concept_dataset``;
* ``network`` — :func:`dissect`, :func:`image_forward`, the recording hook;
* ``top`` — :func:`top_activating` and its :class:`TopActivations`;
* ``describe`` — :func:`describe`, :func:`unit_evidence`, :class:`Evidence`.

Example:
    >>> import mmexplain as mx                                       # doctest: +SKIP
    >>> model = mx.zoo.load("classifier")                            # doctest: +SKIP
    >>> data = mx.world.concept_dataset(500)                         # doctest: +SKIP
    >>> labels = mx.dissect(model, model.default_layer, data)        # doctest: +SKIP
    >>> labels[3].concept, labels[3].category, labels[3].iou         # doctest: +SKIP
    ('red', 'color', 0.31)
"""

import sys
import types

from .datasets import BrodenDataset, shapeworld_categories, shapeworld_concepts
from .describe import Evidence, describe, unit_evidence
from .iou import iou_counts, upsample_bilinear
from .labels import NeuronLabels, UnitLabel
from .network import dissect, image_forward
from .quantile import StreamingQuantile
from .top import TopActivations, top_activating

__all__ = [
    "dissect",
    "describe",
    "unit_evidence",
    "NeuronLabels",
    "UnitLabel",
    "Evidence",
    "StreamingQuantile",
    "iou_counts",
    "upsample_bilinear",
    "top_activating",
    "TopActivations",
    "shapeworld_concepts",
    "shapeworld_categories",
    "image_forward",
    "BrodenDataset",
]


class _CallablePackage(types.ModuleType):
    """The package, callable as :func:`dissect` (a package and a function share one name)."""

    def __call__(self, *args, **kwargs):
        return dissect(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
