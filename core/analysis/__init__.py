"""Analyses read a model and data and never train: what a network computes inside (``features``),
where it looks (``saliency``, ``sanity``, ``overlay``), how far apart two image sets are inside it
(``mmd``, ``domain``), how well a backbone suits a dataset before training (``transferability``),
how a trained classifier does (``predict``, ``evaluation``, ``ood``) and what its curves say
(``diagnosis``). Training, one floor up, may measure with them (DAN minimises ``mmd``'s loss)."""
