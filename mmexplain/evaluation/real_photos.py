"""The real photos the demo and the protocols explain: scikit-image's photos and their ImageNet classes.

EfficientNet-Lite0 (the ``[real]`` extra) should find "Egyptian cat" on ``skimage.data.chelsea()``
and "espresso" on ``skimage.data.coffee()``; ``mmexplain.demo.real_photos`` draws them.
"""

from __future__ import annotations

__all__ = ["PHOTOS"]

PHOTOS = {"chelsea": 285, "coffee": 967}  # scikit-image photo -> ImageNet class ("Egyptian cat", "espresso")
