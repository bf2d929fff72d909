"""Few-shot VQA over shared demonstrations: closed-set ranking and open answers from one cached pass.

The prompt layout is `vlbridge.evaluation.vqa`'s ([<img> "Question: q Answer: a\\n"]* <img>
"Question: q Answer:"), but the solved examples are shared: for each shot count there are
`demo_sets` fixed demonstration lists drawn (seeded) from the support pool, and every question
is assigned to one of them (seeded by its id; never one that shows the question's own image).
The frozen LM reads each demonstration list once per model; its key/value cache is copied to
every question of that set, so a question costs only its own tokens. From the logits after
"Answer:" the evaluator gets, in the same pass:

- the closed-set answer: every canonical answer of the question's type (`vocabulary`) is scored
  by its summed token log-probability after the prompt (" red"; all candidates of a type get a
  trailing newline when one candidate's tokens are a prefix of another's, e.g. "top" / "top left"),
  and the best one is the prediction;
- the open answer: greedy decoding, stopped at the first newline or EOS (at most
  `max_new_tokens`), first line stripped, exactly what `answer_questions` would generate for the
  full prompt (tested).

With `truncate_answers` the open answer is then cut to as many words as the question's longest
human answer has (MAGMA's preprocessing, which LiMBeR's authors say they followed: jmerullo/limber
issue #2). Both are scored with the official VQA accuracy. The blind baseline uses the same demonstration
lists and questions with every image segment removed. Everything is deterministic.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from vlbridge.data.records import VQARecord
from vlbridge.errors import UserError
from vlbridge.evaluation.vqa import FROZEN_TEMPLATE, ImageSegment, TextSegment, check_template, majority_answer, model_segments, shot_text
from vlbridge.runtime import autocast

log = logging.getLogger(__name__)


@dataclass
class FewShotConfig:
    """How the shared-demonstration VQA evaluation runs."""

    shots: tuple[int, ...] = (0, 1, 2, 4)  # shot counts
    demo_sets: int = 5  # fixed demonstration lists per shot count; each question uses one
    seed: int = 0  # seeds demonstration lists and question assignment
    template: str = FROZEN_TEMPLATE  # query text; a solved example is this + " {answer}\n"
    blind: bool = False  # drop every image segment (the no-image baseline)
    batch_size: int = 16  # questions run together over one demonstration cache
    max_new_tokens: int = 8  # open answers: greedy tokens at most
    vocabulary: dict[str, Sequence[str]] = field(default_factory=dict)  # answer type -> closed-set candidates
    truncate_answers: bool = False  # cut open answers to the word count of the longest human answer (MAGMA / LiMBeR)


@dataclass
class QuestionResult:
    """What one question got at one shot count."""

    question_id: str
    answer_type: str | None
    open_answer: str  # greedy answer, first line stripped (and truncated when `truncate_answers`)
    closed_answer: str | None  # best-scored candidate (None when the type has no vocabulary)
    open_accuracy: float  # official VQA accuracy of open_answer
    closed_accuracy: float | None  # official VQA accuracy of closed_answer


def demo_lists(support: Sequence[VQARecord], n_shots: int, config: FewShotConfig) -> list[list[VQARecord]]:
    """`config.demo_sets` lists of `n_shots` solved examples, each on distinct images (seeded)."""
    if n_shots == 0:
        return [[] for _ in range(config.demo_sets)]
    lists = []
    for index in range(config.demo_sets):
        rng = np.random.default_rng([config.seed, n_shots, index])
        chosen, images = [], set()
        for position in rng.permutation(len(support)):
            item = support[int(position)]
            if item.image_id not in images:
                chosen.append(item)
                images.add(item.image_id)
            if len(chosen) == n_shots:
                break
        if len(chosen) < n_shots:
            raise UserError(f"the support pool has only {len(images)} images; {n_shots} shots need {n_shots}")
        lists.append(chosen)
    return lists


def assign_sets(queries: Sequence[VQARecord], lists: list[list[VQARecord]], seed: int) -> list[int]:
    """Demonstration list of each question: seeded by its id, skipping lists that show its image."""
    assigned = []
    for query in queries:
        digest = hashlib.sha256(f"{seed}:{query.question_id}".encode()).digest()
        start = int.from_bytes(digest[:8], "little") % len(lists)
        for step in range(len(lists)):
            index = (start + step) % len(lists)
            if all(demo.image_id != query.image_id for demo in lists[index]):
                assigned.append(index)
                break
        else:
            raise UserError(f"every demonstration list shows the image of question {query.question_id!r}")
    return assigned


def _segments(records: Sequence[VQARecord], features, config: FewShotConfig, solved: bool) -> list:
    segments = []
    for record in records:
        if not config.blind:
            segments.append(ImageSegment(record.image_id, record.image, None if features is None else features[record.image_id]))
        text = shot_text(config.template, record.question.strip(), majority_answer(record.answers)) if solved else \
            config.template.format(question=record.question.strip())
        segments.append(TextSegment(text))
    return segments


def _embed(model, segments: list, bos: bool) -> torch.Tensor:
    """(L, H) embeddings of prompt segments (BOS first when asked and the LM expects one)."""
    from vlbridge.models.limber import embed_prompt

    rows = model.embed_segments([model_segments(segments)]) if segments else [[]]
    if not rows[0] and not (bos and model.lm.prepend_bos):
        return torch.zeros(0, model.lm.hidden_size, device=model.lm.device, dtype=model.lm.dtype)
    return embed_prompt(model.lm, rows[0], bos=bos)


class CandidateSet:
    """Token ids of every canonical answer of one answer type, as they follow "Answer:"."""

    def __init__(self, lm, answers: Sequence[str]):
        self.answers = list(answers)  # canonical answers
        ids = [lm.tokenize([f" {answer}"])[0] for answer in self.answers]
        ambiguous = any(a != b and a == b[: len(a)] for a in ids for b in ids)
        if ambiguous:  # "top" vs "top left": score the answer's end too
            ids = [lm.tokenize([f" {answer}\n"])[0] for answer in self.answers]
        self.token_ids = ids  # per answer, the token ids scored


@torch.no_grad()
def evaluate_fewshot(model, queries: Sequence[VQARecord], support: Sequence[VQARecord], config: FewShotConfig,
                     features: dict[str, torch.Tensor] | None = None, desc: str = "vqa") -> dict[str, list[QuestionResult]]:
    """Every question at every shot count: {str(shots): [QuestionResult in query order]}."""
    check_template(config.template)
    if not queries:
        raise UserError("no VQA questions to evaluate")
    candidates = {kind: CandidateSet(model.lm, answers) for kind, answers in config.vocabulary.items()}
    results: dict[str, list[QuestionResult]] = {}
    for n_shots in config.shots:
        lists = demo_lists(support, n_shots, config)
        assigned = assign_sets(queries, lists, config.seed)
        order = sorted(range(len(queries)), key=lambda i: (assigned[i], i))  # a batch spans few demonstration lists
        demos: dict[int, torch.Tensor] = {}  # demonstration list -> (D, H) embeddings, made once
        by_question: dict[int, QuestionResult] = {}
        for start in tqdm(range(0, len(order), config.batch_size), desc=f"{desc} {n_shots}-shot", leave=False, disable=None):
            chunk = order[start : start + config.batch_size]
            for index in {assigned[i] for i in chunk} - demos.keys():
                demos[index] = _embed(model, _segments(lists[index], features, config, solved=True), bos=True)
            answered = _answer_batch(model, demos, [assigned[i] for i in chunk], [queries[i] for i in chunk],
                                     features, config, candidates)
            by_question.update(zip(chunk, answered))
        results[str(n_shots)] = [by_question[i] for i in range(len(queries))]
        log.info("VQA %d-shot%s: open %.3f, closed %s", n_shots, " (blind)" if config.blind else "",
                 np.mean([r.open_accuracy for r in results[str(n_shots)]]), _closed_mean(results[str(n_shots)]))
    return results


def _closed_mean(rows: list[QuestionResult]) -> str:
    values = [r.closed_accuracy for r in rows if r.closed_accuracy is not None]
    return f"{np.mean(values):.3f}" if values else "-"


def _answer_batch(model, demos: dict[int, torch.Tensor], demo_of_row: list[int], queries: list[VQARecord], features,
                  config: FewShotConfig, candidates) -> list[QuestionResult]:
    from vlbridge.evaluation.metrics.vqa_accuracy import item_accuracy

    lm = model.lm
    suffixes = [_embed(model, _segments([q], features, config, solved=False), bos=False) for q in queries]
    used = sorted(set(demo_of_row))
    state = prompt_state(lm, [demos[i] for i in used], suffixes, [used.index(i) for i in demo_of_row])
    sets = [candidates.get(q.answer_type) for q in queries]
    closed = [None if c is None else c.answers[best] for c, best in zip(sets, best_candidates(lm, state, sets))]
    opened = _greedy(lm, state, config.max_new_tokens)
    if config.truncate_answers:
        opened = [truncate_to_longest_answer(answer, query.answers) for answer, query in zip(opened, queries)]
    rows = []
    for query, open_answer, closed_answer in zip(queries, opened, closed):
        rows.append(QuestionResult(
            question_id=query.question_id, answer_type=query.answer_type, open_answer=open_answer,
            closed_answer=closed_answer, open_accuracy=item_accuracy(open_answer, query.answers),
            closed_accuracy=None if closed_answer is None else item_accuracy(closed_answer, query.answers),
        ))
    return rows


@dataclass
class _PromptState:
    """The LM state after every prompt of a batch: cache, attention mask, next positions, last logits."""

    cache: object  # HF cache holding B rows
    mask: torch.Tensor  # (B, D + S) 1 on real tokens
    next_position: torch.Tensor  # (B, 1) position id of the next token
    log_probs: torch.Tensor  # (B, V) float32 log-probabilities of the next token


def prompt_state(lm, demos: list[torch.Tensor], suffixes: list[torch.Tensor], demo_of_row: list[int] | None = None) -> _PromptState:
    """Run each demonstration once, then every question's own tokens over a copy of its demonstration's cache.

    demos: (D_i, H) embeddings of the demonstration lists in this batch (left-padded together);
    demo_of_row: which of them precedes each suffix (default: all rows share demos[0]).
    """
    demo_of_row = demo_of_row if demo_of_row is not None else [0] * len(suffixes)
    batch, width, demo_len = len(suffixes), max(s.shape[0] for s in suffixes), max(d.shape[0] for d in demos)
    rows = torch.tensor(demo_of_row, device=lm.device)
    cache = None
    with autocast(lm.device):
        demo_mask = torch.zeros(len(demos), demo_len, dtype=torch.long, device=lm.device)  # (N, D) left padded
        if demo_len:
            demo_embeds = torch.zeros(len(demos), demo_len, lm.hidden_size, dtype=lm.dtype, device=lm.device)  # (N, D, H)
            for index, demo in enumerate(demos):
                demo_embeds[index, demo_len - demo.shape[0] :] = demo.to(lm.device, lm.dtype)
                demo_mask[index, demo_len - demo.shape[0] :] = 1
            demo_positions = (demo_mask.cumsum(dim=1) - 1).clamp_min(0)  # (N, D)
            cache = lm(demo_embeds, demo_mask, use_cache=True, position_ids=demo_positions, logits_to_keep=1).cache
            cache.batch_select_indices(rows)  # (B, ...) one copy per question
        embeds = torch.zeros(batch, width, lm.hidden_size, dtype=lm.dtype, device=lm.device)  # (B, S, H)
        suffix_mask = torch.zeros(batch, width, dtype=torch.long, device=lm.device)  # (B, S) left padded
        for row, suffix in enumerate(suffixes):
            embeds[row, width - suffix.shape[0] :] = suffix.to(lm.device, lm.dtype)
            suffix_mask[row, width - suffix.shape[0] :] = 1
        mask = torch.cat([demo_mask[rows], suffix_mask], dim=1)  # (B, D + S)
        positions = (mask.cumsum(dim=1)[:, demo_len:] - 1).clamp_min(0)  # (B, S) continue each row's demonstration
        out = lm(embeds, mask, past_key_values=cache, use_cache=True, position_ids=positions, logits_to_keep=1)
    log_probs = out.logits[:, -1].float().log_softmax(dim=-1)  # (B, V)
    return _PromptState(out.cache, mask, positions[:, -1:] + 1, log_probs)


def candidate_scores(lm, state: _PromptState, sets: list[CandidateSet | None]) -> list[list[float] | None]:
    """Summed token log-probability of every candidate of each question's set after its prompt."""
    scores: dict[tuple[int, int], float] = {}
    longer: list[tuple[int, int, list[int]]] = []  # (question row, candidate, ids) needing more tokens
    for row, candidate_set in enumerate(sets):
        for number, ids in enumerate(candidate_set.token_ids if candidate_set else []):
            scores[row, number] = float(state.log_probs[row, ids[0]])
            if len(ids) > 1:
                longer.append((row, number, ids))
    for start in range(0, len(longer), 64):
        part = longer[start : start + 64]
        for (row, number, _), extra in zip(part, _continuation_scores(lm, state, part)):
            scores[row, number] += extra
    return [None if c is None else [scores[row, n] for n in range(len(c.answers))] for row, c in enumerate(sets)]


def best_candidates(lm, state: _PromptState, sets: list[CandidateSet | None], per_round: int = 2) -> list[int | None]:
    """Index of each question's most likely candidate: the argmax of `candidate_scores`, found with less work.

    A candidate's summed log-probability is at most that of its first token, which the prompt state
    already holds. Candidates are visited from the highest first-token bound down; longer ones are
    scored `per_round` at a time per question, and a question is settled once every candidate left has
    a bound below the best full score so far (ties keep the lower index, as np.argmax does).
    """
    best: list[tuple[float, int] | None] = [None] * len(sets)  # (score, candidate index) per question
    bounds = [[] if c is None else [float(state.log_probs[row, ids[0]]) for ids in c.token_ids]
              for row, c in enumerate(sets)]  # per question and candidate: first-token log-probability
    queues = [sorted(range(len(b)), key=lambda n, b=b: (-b[n], n)) for b in bounds]  # by descending bound
    positions = [0] * len(sets)

    def offer(row: int, number: int, score: float) -> None:
        if best[row] is None or score > best[row][0] or (score == best[row][0] and number < best[row][1]):
            best[row] = (score, number)

    while True:
        pending: list[tuple[int, int, list[int]]] = []  # (question row, candidate, ids) scored this round
        for row, candidate_set in enumerate(sets):
            taken = 0
            while positions[row] < len(queues[row]) and taken < per_round:
                number = queues[row][positions[row]]
                ids, bound = candidate_set.token_ids[number], bounds[row][number]
                if best[row] is not None and bound < best[row][0]:
                    positions[row] = len(queues[row])  # nothing left can win
                    break
                positions[row] += 1
                if len(ids) == 1:
                    offer(row, number, bound)
                else:
                    pending.append((row, number, ids))
                    taken += 1
        if not pending:
            break
        for start in range(0, len(pending), 64):
            part = pending[start : start + 64]
            for (row, number, ids), extra in zip(part, _continuation_scores(lm, state, part)):
                offer(row, number, bounds[row][number] + extra)
    return [None if b is None else b[1] for b in best]


def _select_rows(cache, rows: torch.Tensor):
    """A cache holding only `rows` of `cache`, which stays as it is (no copy of the other rows)."""
    selected = copy.copy(cache)
    selected.layers = [copy.copy(layer) for layer in cache.layers]
    selected.batch_select_indices(rows)
    return selected


def _continuation_scores(lm, state: _PromptState, part: list[tuple[int, int, list[int]]]) -> list[float]:
    """Log-probability of tokens 2.. of each candidate after its question's prompt (cached)."""
    rows = torch.tensor([row for row, _, _ in part], device=lm.device)
    cache = _select_rows(state.cache, rows)
    width = max(len(ids) for _, _, ids in part) - 1
    inputs = torch.full((len(part), width), lm.pad_token_id, dtype=torch.long, device=lm.device)  # (C, W)
    extra_mask = torch.zeros(len(part), width, dtype=torch.long, device=lm.device)  # (C, W) right padded
    for index, (_, _, ids) in enumerate(part):
        inputs[index, : len(ids) - 1] = torch.tensor(ids[:-1], device=lm.device)
        extra_mask[index, : len(ids) - 1] = 1
    positions = state.next_position[rows] + torch.arange(width, device=lm.device)[None]  # (C, W)
    mask = torch.cat([state.mask[rows], extra_mask], dim=1)
    with autocast(lm.device):
        logits = lm(lm.embed(inputs), mask, past_key_values=cache, use_cache=True, position_ids=positions).logits
    log_probs = logits.float().log_softmax(dim=-1)  # (C, W, V)
    return [float(sum(log_probs[i, t, ids[t + 1]] for t in range(len(ids) - 1))) for i, (_, _, ids) in enumerate(part)]


def _greedy(lm, state: _PromptState, max_new_tokens: int) -> list[str]:
    """Greedy answers from the prompt state, stopped at a newline-bearing token or EOS."""
    stop = torch.tensor(sorted(lm.newline_token_ids | {lm.eos_token_id}), device=lm.device)
    tokens = state.log_probs.argmax(dim=-1)  # (B,)
    generated = [[int(t)] for t in tokens]
    done = torch.isin(tokens, stop)
    cache, mask, position = state.cache, state.mask, state.next_position
    for _ in range(max_new_tokens - 1):
        if bool(done.all()):
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        with autocast(lm.device):
            out = lm(lm.embed(tokens[:, None]), mask, past_key_values=cache, use_cache=True, position_ids=position, logits_to_keep=1)
        cache, position = out.cache, position + 1
        tokens = out.logits[:, -1].float().argmax(dim=-1)  # (B,)
        for row in range(len(generated)):
            if not done[row]:
                generated[row].append(int(tokens[row]))
        done = done | torch.isin(tokens, stop)
    return [_first_line(lm, ids) for ids in generated]


def truncate_to_longest_answer(answer: str, answers: Sequence[str]) -> str:
    """`answer`'s first N whitespace-separated words, N = the word count of the longest of `answers`."""
    longest = max((len(a.split()) for a in answers), default=0)
    return " ".join(answer.split()[:longest]) if longest else answer.strip()


def _first_line(lm, ids: list[int]) -> str:
    if ids and ids[-1] == lm.eos_token_id:
        ids = ids[:-1]
    return lm.decode(ids).split("\n", 1)[0].strip()
