"""``vocab``: the token embedding of a ``bert``-trunk model made small, and the tokenizer with it.

* vocabulary pruning (``prune``): keep the WordPiece tokens that occur in the step's windows
  (``data.x`` and ``data.x_val``, token ids of an unlabelled corpus: the transfer phrases), every
  special token and every single-character piece (``c`` and ``##c`` of the tokenizer), in their
  original order. On the corpus the pruned tokenizer gives the same pieces (every piece it used is
  kept); elsewhere a word splits into the kept pieces or becomes ``[UNK]`` (WordPiece's own rule),
  so the device tokenizer keeps working;
* factorisation (``rank`` > 0): the word table (V', d) stored as ``(V', r) @ (r, d)``, initialised by
  the truncated SVD of the kept rows (:class:`~edgeuq.models.bert.FactorisedEmbeddings`);
* ``trim_positions``: keep only the ``input_length`` rows of the position table the tokenizer can
  emit (same outputs for every input the bundle accepts).

The new vocabulary reaches the bundle through the checkpoint: the step's output folder gets the
pruned ``tokenizer.json`` (:attr:`StepResult.files`), which ``export_onnx`` copies into the export
and ``build_bundle`` into the bundle, where the runtime's ``predict_text`` tokenises with it. The
chain (:func:`edgeuq.compress.chain.run_chain`) maps the data's token ids into the new vocabulary
for the steps after this one (and maps them back for the teacher, who reads the old ids).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict

import numpy as np
import torch
from torch import nn

from edgeuq_runtime.wordpiece import WordPieceTokenizer

from ...models.bert import BertEncoder, FactorisedEmbeddings
from ...models.transformer import build_model
from ...training.checkpoint import TOKENIZER_FILE
from ..slicing import count_params
from . import COMPRESSION_STEPS, CompressionStep, StepData, StepResult

__all__ = ["Vocab", "kept_token_ids"]


def kept_token_ids(tokenizer: WordPieceTokenizer, corpus_ids: np.ndarray) -> np.ndarray:
    """The ids (in order) a pruned vocabulary keeps: those in ``corpus_ids``, the specials and the
    single-character pieces (``c``, ``##c``)."""
    vocab = tokenizer.vocab
    keep = np.zeros(len(vocab), bool)
    ids = np.unique(np.asarray(corpus_ids, dtype=np.int64).ravel())
    if ids.size and (ids[0] < 0 or ids[-1] >= len(vocab)):
        raise ValueError(f"vocab: token ids outside the tokenizer's vocabulary of {len(vocab)} "
                         f"(min {ids[0]}, max {ids[-1]})")
    keep[ids] = True
    prefix = tokenizer.continuing_subword_prefix
    special = set(tokenizer.special_tokens) | {tokenizer.unk_token, tokenizer.cls_token, tokenizer.sep_token,
                                               tokenizer.pad_token}
    for i, t in enumerate(vocab):
        if t in special or len(t) == 1 or (t.startswith(prefix) and len(t) == len(prefix) + 1):
            keep[i] = True
    return np.flatnonzero(keep)


def _word_table(enc: BertEncoder) -> torch.Tensor:
    e = enc.embeddings
    if isinstance(e, FactorisedEmbeddings):
        return e.word_proj(e.word_low.weight).detach()
    return e.word_embeddings.weight.detach()


@COMPRESSION_STEPS.register("vocab")
class Vocab(CompressionStep):
    #: needs token windows and the tokenizer they were made with (StepData.tokenizer)
    needs_tokenizer = True

    @dataclass(frozen=True)
    class Options:
        prune: bool = True          # keep the corpus's tokens + specials + single characters
        rank: int = 0               # > 0: factorise the word table to this rank (SVD-initialised)
        trim_positions: bool = False  # keep only the input_length rows of the position table

        def __post_init__(self) -> None:
            for name in ("prune", "trim_positions"):
                if not isinstance(getattr(self, name), bool):
                    raise ValueError(f"vocab option {name} must be true or false, got {getattr(self, name)!r}")
            if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 0:
                raise ValueError(f"vocab option rank must be an integer >= 0, got {self.rank!r}")

    def apply(self, model: nn.Module, data: StepData, options: "Vocab.Options") -> StepResult:
        enc = getattr(model, "encoder", None)
        if not isinstance(enc, BertEncoder):
            raise ValueError(f"compression step 'vocab' works on a model with a BERT token embedding (trunk 'bert'); "
                             f"trunk {model.cfg.trunk!r} has none")
        tok = data.tokenizer
        if not isinstance(tok, WordPieceTokenizer):
            raise ValueError("compression step 'vocab' needs the WordPiece tokenizer of the step's token windows "
                             "(StepData.tokenizer; the chain reads it from the checkpoint's tokenizer.json)")
        cfg, o = model.cfg, model.cfg.trunk_options
        if tok.vocab_size != cfg.vocab_size:
            raise ValueError(f"vocab: tokenizer has {tok.vocab_size} tokens, the model {cfg.vocab_size}")
        corpus = [data.x] + ([] if data.x_val is None else [data.x_val])
        keep = (kept_token_ids(tok, np.concatenate([np.asarray(c).reshape(-1) for c in corpus]))
                if options.prune else np.arange(tok.vocab_size))
        new_tok = dataclasses.replace(tok, vocab=tuple(tok.vocab[i] for i in keep))
        d = cfg.d_model
        rank = options.rank or o.embedding_rank
        if rank and rank >= min(len(keep), d):
            raise ValueError(f"vocab option rank ({rank}) must be below min(kept vocabulary {len(keep)}, "
                             f"width {d}) to save anything")
        positions = cfg.input_length if options.trim_positions else o.max_positions
        new_cfg = dataclasses.replace(cfg, vocab_size=int(len(keep)), trunk_options=dataclasses.replace(
            o, embedding_rank=int(rank), max_positions=int(positions), pad_token_id=int(new_tok.pad_id)))
        state = dict(model.state_dict())
        table = _word_table(enc)[torch.from_numpy(keep)]
        for k in [k for k in state if k.startswith("encoder.embeddings.word_")]:
            del state[k]
        info: Dict[str, Any] = {"vocab_before": int(tok.vocab_size), "vocab_after": int(len(keep)),
                                "rank": int(rank), "positions": int(positions)}
        if rank:
            emb = FactorisedEmbeddings(dataclasses.replace(enc.cfg, vocab_size=int(len(keep))), rank)
            info["embedding_svd_rel_error"] = emb.init_svd(table)
            state["encoder.embeddings.word_low.weight"] = emb.word_low.weight.detach()
            state["encoder.embeddings.word_proj.weight"] = emb.word_proj.weight.detach()
        else:
            state["encoder.embeddings.word_embeddings.weight"] = table.clone()
        key = "encoder.embeddings.position_embeddings.weight"
        state[key] = state[key][:positions].clone()
        new = build_model(new_cfg)
        new.load_state_dict(state, strict=True)
        new.train(model.training)
        info["embedding_params_before"] = int(sum(p.numel() for n, p in model.named_parameters()
                                                  if n.startswith("encoder.embeddings.")))
        info["embedding_params_after"] = int(sum(p.numel() for n, p in new.named_parameters()
                                                 if n.startswith("encoder.embeddings.")))
        info["params_before"] = count_params(model)
        info["params_after"] = count_params(new)
        return StepResult(new, info, files={TOKENIZER_FILE: new_tok.save})
