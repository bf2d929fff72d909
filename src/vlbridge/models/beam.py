"""Batched beam search over a `FrozenLM` with a KV cache, matching Hugging Face's rules.

Called by `vlbridge.models.generation.generate` for strategy "beam". The bookkeeping follows
HF `generate(num_beams=K, do_sample=False)` so that both give the same output:

- each step scores K*V continuations per row (sum of log-softmax, in float32) and keeps the
  top C = max(2, 1 + number of stop tokens) * K of them;
- a candidate "stops" when its token is a stop token or it reaches max_new_tokens; among
  the first K candidates, stopped ones become finished hypotheses with score
  sum_logprob / generated_length ** length_penalty (the stop token counts in the length);
- the K best non-stopped candidates keep running (the KV cache is reordered to follow them);
- a row stops collecting hypotheses once it holds K finished ones and, by HF's heuristic, the
  best running beam can no longer beat the worst of them (early_stopping False: judged at the
  current length; "never" with length_penalty > 0: at max length; True: as soon as K are done);
- the answer of a row is its best finished hypothesis.

"Impossible" entries are pushed down by adding -1e9 (as HF does) rather than removed, so the
top-k choices, ties included, are made on the same numbers.
"""

from __future__ import annotations

from typing import Any

import torch

from vlbridge.models.padding import grow_mask, prompt_positions, unpadded_as_none

NEG = -1.0e9  # score offset that rules an entry out while keeping tensor shapes fixed


def _gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, N, ...) gathered along dim 1 by index (B, M) -> (B, M, ...)."""
    expanded = index.view(*index.shape, *([1] * (values.dim() - 2))).expand(*index.shape, *values.shape[2:])
    return values.gather(1, expanded)


class _Hypotheses:
    """The K best finished hypotheses of every row: tokens, lengths, scores, filled flags."""

    def __init__(self, batch_size: int, num_beams: int, max_new: int, device: torch.device):
        self.tokens = torch.zeros(batch_size, num_beams, max_new, dtype=torch.long, device=device)  # (B, K, T)
        self.lengths = torch.zeros(batch_size, num_beams, dtype=torch.long, device=device)  # (B, K)
        self.scores = torch.full((batch_size, num_beams), NEG, device=device)  # (B, K)
        self.filled = torch.zeros(batch_size, num_beams, dtype=torch.bool, device=device)  # (B, K)

    def merge(self, cand_tokens, cand_scores, cand_new, gen_len: int) -> None:
        """Add the newly finished candidates (cand_new) and keep the K best per row."""
        num_beams = self.scores.shape[1]
        cand_lengths = torch.full_like(cand_scores, gen_len, dtype=torch.long)
        all_tokens = torch.cat([self.tokens, cand_tokens], dim=1)  # (B, K + C, T)
        all_scores = torch.cat([self.scores, cand_scores], dim=1)  # (B, K + C)
        all_lengths = torch.cat([self.lengths, cand_lengths], dim=1)
        all_filled = torch.cat([self.filled, cand_new], dim=1)
        best = all_scores.topk(num_beams, dim=1).indices  # (B, K)
        self.tokens = _gather_rows(all_tokens, best)
        self.scores = all_scores.gather(1, best)
        self.lengths = all_lengths.gather(1, best)
        self.filled = all_filled.gather(1, best)


def _stop_when_full(hyps: _Hypotheses, early_stopping) -> torch.Tensor:
    """(B, 1) True where early_stopping is True and the row already holds K finished hypotheses."""
    return hyps.filled.all(dim=1, keepdim=True) & (early_stopping is True)


def _may_still_improve(may_improve, running_scores, hyps: _Hypotheses, gen_len: int, config: Any):
    """HF's heuristic: can the best running beam still beat the worst finished hypothesis? (B, 1)."""
    if config.early_stopping == "never" and config.length_penalty > 0.0:
        best_length = config.max_new_tokens
    else:
        best_length = gen_len
    best_running = running_scores[:, :1] / (best_length**config.length_penalty)  # (B, 1)
    worst_done = hyps.scores.min(dim=1, keepdim=True).values  # (B, 1)
    worst_done = torch.where(hyps.filled, worst_done, torch.full_like(hyps.scores, NEG))  # (B, K)
    return may_improve & (best_running > worst_done).any(dim=1, keepdim=True)


def _top_continuations(last_logits, running_scores, running_tokens, step: int, num_candidates: int):
    """The C best (beam, token) continuations of every row by summed log-probability.

    last_logits (B*K, V), running_scores (B, K), running_tokens (B, K, T) -> candidate
    scores (B, C), source beams (B, C) and token sequences (B, C, T) with `step` filled in.
    """
    batch_size, num_beams = running_scores.shape
    log_probs = torch.log_softmax(last_logits.float(), dim=-1)  # (B*K, V)
    vocab = log_probs.shape[-1]
    totals = (log_probs.view(batch_size, num_beams, vocab) + running_scores[:, :, None]).view(batch_size, -1)
    cand_scores, cand_flat = totals.topk(num_candidates, dim=1)  # (B, C)
    cand_beam, cand_token = cand_flat // vocab, cand_flat % vocab  # (B, C) each
    cand_tokens = _gather_rows(running_tokens, cand_beam).clone()  # (B, C, T)
    cand_tokens[:, :, step] = cand_token
    return cand_scores, cand_beam, cand_tokens


@torch.no_grad()
def beam_search(lm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, stop_ids: list[int], config):
    """Beam-search every row of a left-padded prompt; returns tokens (B, T) and lengths (B,)."""
    batch_size, _, _ = inputs_embeds.shape
    num_beams, max_new = config.num_beams, config.max_new_tokens
    num_candidates = max(2, 1 + len(stop_ids)) * num_beams  # C
    device = inputs_embeds.device
    stop_tensor = torch.tensor(stop_ids, device=device)
    among_first_k = torch.arange(num_candidates, device=device) < num_beams  # (C,)
    row_offset = torch.arange(batch_size, device=device)[:, None] * num_beams  # (B, 1)

    mask = attention_mask.long().repeat_interleave(num_beams, dim=0)  # (B*K, L)
    positions = prompt_positions(mask)  # (B*K, L)
    mask = unpadded_as_none(mask)
    embeds = inputs_embeds.repeat_interleave(num_beams, dim=0)  # (B*K, L, H)
    output = lm(embeds, mask, use_cache=True, position_ids=positions, logits_to_keep=1)
    cache, next_positions = output.cache, positions[:, -1:] + 1  # (B*K, 1)

    running_tokens = torch.zeros(batch_size, num_beams, max_new, dtype=torch.long, device=device)  # (B, K, T)
    running_scores = torch.zeros(batch_size, num_beams, device=device)  # (B, K)
    running_scores[:, 1:] = NEG  # the K copies are identical at first: expand only beam 0
    hyps = _Hypotheses(batch_size, num_beams, max_new, device)
    may_improve = torch.ones(batch_size, 1, dtype=torch.bool, device=device)  # (B, 1)

    for step in range(max_new):
        gen_len = step + 1
        cand_scores, cand_beam, cand_tokens = _top_continuations(
            output.logits[:, -1], running_scores, running_tokens, step, num_candidates
        )  # (B, C), (B, C), (B, C, T)
        cand_stops = torch.isin(cand_tokens[:, :, step], stop_tensor) | (gen_len >= max_new)  # (B, C)

        alive_scores = cand_scores + cand_stops.float() * NEG  # (B, C)
        keep = alive_scores.topk(num_beams, dim=1).indices  # (B, K)
        running_tokens = _gather_rows(cand_tokens, keep)
        running_scores = alive_scores.gather(1, keep)
        source_beam = cand_beam.gather(1, keep)  # (B, K)

        cand_new = cand_stops & among_first_k[None, :]  # (B, C)
        done_scores = cand_scores / (gen_len**config.length_penalty)
        done_scores = done_scores + _stop_when_full(hyps, config.early_stopping).float() * NEG
        done_scores = done_scores + (~may_improve).float() * NEG
        done_scores = done_scores + (~cand_new).float() * NEG
        hyps.merge(cand_tokens, done_scores, cand_new, gen_len)

        may_improve = _may_still_improve(may_improve, running_scores, hyps, gen_len, config)
        all_full = bool(_stop_when_full(hyps, config.early_stopping).all())
        if not bool(may_improve.any()) or all_full or bool(cand_stops.all()):
            break
        cache.reorder_cache((source_beam + row_offset).view(-1))
        mask = grow_mask(mask)  # (B*K, L + gen_len) or None
        step_embeds = lm.embed(running_tokens[:, :, step].reshape(-1, 1))  # (B*K, 1, H)
        output = lm(
            step_embeds, mask, past_key_values=cache, use_cache=True, position_ids=next_positions, logits_to_keep=1
        )
        cache, next_positions = output.cache, next_positions + 1
    return hyps.tokens[:, 0], hyps.lengths[:, 0]
