"""Methods built on the one training loop, each with the objective that defines it: domain adaptation
by MMD (``adaptation``), knowledge distillation (``distillation``), shared vs separate multi-task
models (``multitask``), few-shot episodes and meta-learning (``episodes``, ``fewshot``) and the
learning-rate range test (``lr_finder``). A method trains and returns its result; it never queues,
starts or records a run (``core.runs.kinds`` does that for each of them)."""
