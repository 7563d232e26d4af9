"""Pretrained text teacher: an edgeuq-owned BERT encoder loaded from the packaged
all-MiniLM-L6-v2 (``text`` extra), device WordPiece, fine-tuning with cached
frozen layers, MC-dropout / last-layer-Laplace heads, export and bundling.

Submodules are imported lazily by users (``edgeuq.models.bert`` needs only torch;
``edgeuq.text.pretrained`` needs the ``text`` extra at call time)."""
