"""Training, held-out evaluation and model cards of the shipped models; imported only by ``mmexplain train``.

Modules:

* :mod:`.loop`: the one training loop (AdamW, warm-up + cosine, step or time budget,
  seeding, gradient clipping, divergence check, progress lines);
* :mod:`.zoo`: batches and losses of the CNN models (classifier, captioner, vqa);
* :mod:`.tiny_hf`: cached scene splits, batches and losses of tiny-ved and tiny-vilt;
* :mod:`.evaluate`: held-out metrics, and the Grad-CAM pointing game (``mx.GradCAM``);
* :mod:`.cards`: ``CARD.md`` text;
* :mod:`.run`: each model's recipe; train + evaluate + save; evaluate a checkpoint.

Loading needs none of this: ``mx.zoo.load(NAME)``.
"""
