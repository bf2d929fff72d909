"""Caption/VQA scoring entry points and the readers of the files `vlbridge score` accepts.

- `score_captions(refs, cands, tokenize="ptb", domains=None)`: raw caption strings in, all of
  CIDEr-D, BLEU-1..4 and ROUGE-L out (corpus and per image); with `domains`, every domain is
  also scored on its own (document frequencies computed within the domain, "df_scope":
  "per-domain"), plus "entire" (the whole corpus). Used by the CLI and the study. Each metric
  splits the strings as its pycocoevalcap counterpart does (`rouge_tokens`), so scores equal
  pycocoevalcap's on raw text too (tabs, runs of spaces, Unicode whitespace).
- `score_nocaps(...)`: the NoCaps report (in-domain, near-domain, out-domain, entire).
- Readers: `read_json` (UTF-8, one clear error for bad bytes or JSON), `load_caption_file`
  ({"refs", "cands", "domains"?}), `load_coco_captions` (COCO annotations + results),
  `load_vqa_file` ({"items": [...]}), `load_vqav2_official` (questions, annotations, results).
Every malformed input raises `BadInputError` (a `UserError`) that names the problem.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vlbridge import jsontext
from vlbridge.errors import BadInputError
from vlbridge.evaluation.metrics.bleu import bleu
from vlbridge.evaluation.metrics.cider import build_index, cider_d, index_sentences
from vlbridge.evaluation.metrics.ptb_tokenizer import ptb_tokenize
from vlbridge.evaluation.metrics.rouge import rouge_l

log = logging.getLogger(__name__)

TOKENIZERS = ("ptb", "none")  # "ptb": coco-caption PTB pipeline; "none": the raw strings, split as each scorer splits
CAPTION_METRICS = ("CIDEr-D", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L")
NOCAPS_DOMAINS = {"in": "in-domain", "near": "near-domain", "out": "out-domain"}  # short name -> report name


def check_captions(refs: Any, cands: Any, domains: Any = None) -> None:
    """BadInputError unless refs = {id: [str, ...]}, cands = {id: str} over the same ids (+ domains {id: str})."""
    if not isinstance(refs, dict) or not refs:
        raise BadInputError(f"'refs' must be a non-empty object {{id: [caption, ...]}}, got {type(refs).__name__}")
    if not isinstance(cands, dict):
        raise BadInputError(f"'cands' must be an object {{id: caption}}, got {type(cands).__name__}")
    for key, captions in refs.items():
        if not isinstance(captions, list):
            raise BadInputError(f"references of id {key!r} must be a list of strings, got {type(captions).__name__}")
        if not captions:
            raise BadInputError(f"id {key!r} has an empty list of references")
        if not all(isinstance(c, str) for c in captions):
            raise BadInputError(f"references of id {key!r} must all be strings, got {captions!r:.80}")
    for key, caption in cands.items():
        if not isinstance(caption, str):
            raise BadInputError(f"the candidate of id {key!r} must be a string, got {type(caption).__name__}")
    no_refs = [k for k in cands if k not in refs]
    if no_refs:
        raise BadInputError(f"{len(no_refs)} candidate(s) have no references, e.g. id {no_refs[0]!r}")
    no_cand = [k for k in refs if k not in cands]
    if no_cand:
        raise BadInputError(f"{len(no_cand)} id(s) have references but no candidate, e.g. id {no_cand[0]!r}")
    if domains is not None:
        if not isinstance(domains, dict):
            raise BadInputError(f"'domains' must be an object {{id: domain}}, got {type(domains).__name__}")
        missing = [k for k in refs if not isinstance(domains.get(k), str)]
        if missing:
            raise BadInputError(f"{len(missing)} id(s) have no domain (a string), e.g. id {missing[0]!r}")


def caption_texts(captions: list[str], tokenize: str) -> list[str]:
    """The strings pycocoevalcap's scorers are handed: PTB output ("ptb") or the captions as they are ("none").

    PTB output is the tokens joined by single spaces; a token may hold a U+00A0 ("5\u00a07/8").
    """
    if tokenize == "ptb":
        show = sys.stderr.isatty() and len(captions) > 10_000
        return [ptb_tokenize(c) for c in tqdm(captions, desc="PTB tokenization", disable=not show)]
    if tokenize == "none":
        return list(captions)
    raise BadInputError(f"unknown tokenization {tokenize!r}; expected one of {', '.join(TOKENIZERS)}")


def rouge_tokens(texts: list[str], tokens: list[list[str]]) -> list[list[str]] | None:
    """`str.split(" ")` of `texts`, as pycocoevalcap's ROUGE-L splits, or None where that equals `tokens`.

    CIDEr-D and BLEU take `str.split()` tokens (any Unicode whitespace separates, as in
    pycocoevalcap's Cider and Bleu; a U+00A0 inside a PTB token such as "5\u00a07/8" splits it).
    The two splits agree exactly when every text is its tokens joined by single spaces (an empty
    text gives [] and [""], which ROUGE-L treats alike); otherwise (tabs, runs of spaces, leading
    or trailing spaces, other Unicode whitespace) ROUGE-L needs its own tokens.
    """
    if list(map(" ".join, tokens)) == texts:
        return None
    return [text.split(" ") for text in texts]


def score_tokenized(
    refs: dict[str, list[list[str]]],
    cands: dict[str, list[str]],
    rouge_refs: dict[str, list[list[str]]] | None = None,
    rouge_cands: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """All caption metrics of an already tokenized corpus: {"corpus": {...}, "per_id": {...}}.

    ROUGE-L scores `rouge_refs`/`rouge_cands` when given (pycocoevalcap's own split of the same
    strings), else the tokens CIDEr-D and BLEU score.
    """
    index = build_index(refs, cands)
    rouge_index = index if rouge_refs is None else index_sentences(rouge_refs, rouge_cands)
    scores = {"CIDEr-D": cider_d(index=index), **bleu(index=index), "ROUGE-L": rouge_l(index=rouge_index)}
    corpus = {name: scores[name].corpus for name in CAPTION_METRICS}
    columns = zip(*(scores[name].per_id.values() for name in CAPTION_METRICS))  # per_id dicts share index.ids order
    per_id = {key: dict(zip(CAPTION_METRICS, values)) for key, values in zip(index.ids, columns)}
    return {"corpus": corpus, "per_id": per_id}


def score_captions(
    refs: dict[str, list[str]],
    cands: dict[str, str],
    tokenize: str = "ptb",
    domains: dict[str, str] | None = None,
) -> dict[str, Any]:
    """CIDEr-D (x10 scale as pycocoevalcap), BLEU-1..4 and ROUGE-L of caption strings.

    Each metric splits the (PTB-tokenized or raw) strings as its pycocoevalcap counterpart does:
    CIDEr-D and BLEU on any whitespace, ROUGE-L on U+0020 only.
    Returns {"corpus", "per_id", "tokenize", "num_images"} and, with `domains`, "by_domain":
    {domain: corpus metrics of that domain alone, ..., "entire": the whole corpus} with
    "df_scope": "per-domain" (CIDEr-D document frequencies are computed within each domain).
    """
    check_captions(refs, cands, domains)
    if tokenize not in TOKENIZERS:
        raise BadInputError(f"unknown tokenization {tokenize!r}; expected one of {', '.join(TOKENIZERS)}")
    ids = list(refs)
    texts = caption_texts([c for k in ids for c in refs[k]] + [cands[k] for k in ids], tokenize)
    tokens = [text.split() for text in texts]
    split_for_rouge = rouge_tokens(texts, tokens)
    ref_tokens, cand_tokens = _regroup(tokens, ids, refs)
    rouge = _regroup(split_for_rouge, ids, refs) if split_for_rouge is not None else (None, None)
    if len(ids) == 1:
        log.warning("a single image: CIDEr-D is 0 by construction (idf = ln 1 - ln 1), as in pycocoevalcap")
    result = {**score_tokenized(ref_tokens, cand_tokens, *rouge), "tokenize": tokenize, "num_images": len(ids)}
    if domains is not None:
        by_domain = {}
        for domain in dict.fromkeys(domains[k] for k in ids):  # first-seen order
            subset = [k for k in ids if domains[k] == domain]
            if len(subset) == 1:
                log.warning("domain %r has a single image: its CIDEr-D is 0 (idf = ln 1 - ln 1), as in pycocoevalcap", domain)
            parts = [None if part is None else {k: part[k] for k in subset} for part in (ref_tokens, cand_tokens, *rouge)]
            by_domain[domain] = {**score_tokenized(*parts)["corpus"], "num_images": len(subset)}
        by_domain["entire"] = {**result["corpus"], "num_images": len(ids)}
        result["by_domain"] = by_domain
        result["df_scope"] = "per-domain"
    return result


def _regroup(flat: list[list[str]], ids: list[str], refs: dict[str, list[str]]) -> tuple[dict, dict]:
    """({id: [ref tokens]}, {id: cand tokens}) from the token lists of all references (in id order), then candidates."""
    ref_groups, start = {}, 0
    for key in ids:
        ref_groups[key] = flat[start : start + len(refs[key])]
        start += len(refs[key])
    return ref_groups, dict(zip(ids, flat[start:]))


def score_nocaps(refs: dict[str, list[str]], cands: dict[str, str], domains: dict[str, str], tokenize: str = "ptb") -> dict[str, Any]:
    """NoCaps report: metrics for in-domain, near-domain, out-domain (df within each) and entire.

    Domains may be written "in"/"near"/"out" or "in-domain"/"near-domain"/"out-domain".
    """
    if not isinstance(domains, dict):
        raise BadInputError(f"NoCaps scoring needs domains {{id: domain}}, got {type(domains).__name__}")
    names = {**NOCAPS_DOMAINS, **{v: v for v in NOCAPS_DOMAINS.values()}}
    unknown = sorted({str(d) for d in domains.values() if d not in names})
    if unknown:
        raise BadInputError(f"unknown NoCaps domain(s) {unknown}; expected in/near/out (or in-domain/near-domain/out-domain)")
    result = score_captions(refs, cands, tokenize, {k: names[d] for k, d in domains.items()})
    order = [*NOCAPS_DOMAINS.values(), "entire"]
    result["by_domain"] = {d: result["by_domain"][d] for d in order if d in result["by_domain"]}
    return result


def read_json(path: str | Path, what: str) -> Any:
    """Parse a UTF-8 JSON file; BadInputError for a missing file, bad bytes or bad JSON."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{what} file {path} does not exist")
    try:
        return jsontext.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise BadInputError(f"{what} file {path} is not UTF-8 text (byte {err.start}: {err.reason})") from err
    except json.JSONDecodeError as err:
        raise BadInputError(f"{what} file {path} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from err


def load_caption_file(path: str | Path) -> tuple[dict[str, list[str]], dict[str, str], dict[str, str] | None]:
    """(refs, cands, domains) from {"refs": {id: [str]}, "cands": {id: str}, "domains"?: {id: str}}."""
    data = read_json(path, "captions")
    if not isinstance(data, dict) or "refs" not in data or "cands" not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise BadInputError(f"captions file {path} must hold an object with 'refs' and 'cands' (and optional 'domains'), got {keys}")
    refs, cands, domains = data["refs"], data["cands"], data.get("domains")
    check_captions(refs, cands, domains)
    return refs, cands, domains


def load_coco_captions(annotations_path: str | Path, results_path: str | Path):
    """(refs, cands, domains) from a COCO captions annotation file and a COCO results file.

    Scores the images that have a result (as `cocoEval.params['image_id'] = cocoRes.getImgIds()`);
    domains come from the images' "domain" field when present (NoCaps annotation files).
    """
    annotations = read_json(annotations_path, "COCO annotations")
    results = read_json(results_path, "COCO results")
    if not isinstance(annotations, dict) or not isinstance(annotations.get("annotations"), list):
        raise BadInputError(f"COCO annotations file {annotations_path} must hold an object with an 'annotations' list")
    if not isinstance(results, list):
        raise BadInputError(f"COCO results file {results_path} must hold a list of {{image_id, caption}}, got {type(results).__name__}")
    refs: dict[str, list[str]] = {}
    for i, ann in enumerate(annotations["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise BadInputError(f"COCO annotation {i} in {annotations_path} needs 'image_id' and a string 'caption'")
        refs.setdefault(str(ann["image_id"]), []).append(ann["caption"])
    cands: dict[str, str] = {}
    for i, res in enumerate(results):
        if not isinstance(res, dict) or "image_id" not in res or not isinstance(res.get("caption"), str):
            raise BadInputError(f"COCO result {i} in {results_path} needs 'image_id' and a string 'caption'")
        key = str(res["image_id"])
        if key in cands:
            raise BadInputError(f"COCO results file {results_path} has more than one caption for image {key}")
        if key not in refs:
            raise BadInputError(f"COCO result for image {key} has no reference captions in {annotations_path}")
        cands[key] = res["caption"]
    unscored = len(refs) - len(cands)
    if unscored:
        log.warning("%d annotated images have no result and are not scored", unscored)
    domains = {str(img["id"]): img["domain"] for img in annotations.get("images", []) if isinstance(img, dict) and "domain" in img and "id" in img}
    refs = {k: refs[k] for k in cands}
    return refs, cands, ({k: domains.get(k) for k in cands} if domains else None)


def load_vqa_file(path: str | Path) -> list[dict[str, Any]]:
    """Items from {"items": [{"id", "pred", "answers": [10 str], "answer_type"?}, ...]} (validated by vqa_accuracy)."""
    data = read_json(path, "VQA")
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise BadInputError(f"VQA file {path} must hold an object with an 'items' list of {{id, pred, answers}}")
    return data["items"]


def load_vqav2_official(annotations_path: str | Path, results_path: str | Path, questions_path: str | Path | None = None) -> list[dict[str, Any]]:
    """Items from the official VQA v2 annotation and results files (and, to cross-check, questions).

    Like the official tool, the results must answer exactly the annotated questions.
    """
    annotations = read_json(annotations_path, "VQA annotations")
    results = read_json(results_path, "VQA results")
    if not isinstance(annotations, dict) or not isinstance(annotations.get("annotations"), list):
        raise BadInputError(f"VQA annotations file {annotations_path} must hold an object with an 'annotations' list")
    if not isinstance(results, list):
        raise BadInputError(f"VQA results file {results_path} must hold a list of {{question_id, answer}}")
    truth: dict[Any, dict[str, Any]] = {}
    for i, ann in enumerate(annotations["annotations"]):
        answers = ann.get("answers") if isinstance(ann, dict) else None
        if not isinstance(answers, list) or "question_id" not in ann or not all(isinstance(a, dict) and "answer" in a for a in answers):
            raise BadInputError(f"VQA annotation {i} in {annotations_path} needs 'question_id' and 'answers' [{{answer}}, ...]")
        truth[ann["question_id"]] = ann
    predictions: dict[Any, Any] = {}
    for i, res in enumerate(results):
        if not isinstance(res, dict) or "question_id" not in res or not isinstance(res.get("answer"), str):
            raise BadInputError(f"VQA result {i} in {results_path} needs 'question_id' and a string 'answer'")
        if res["question_id"] in predictions:
            raise BadInputError(f"VQA results file {results_path} answers question {res['question_id']} more than once")
        predictions[res["question_id"]] = res["answer"]
    if set(predictions) != set(truth):
        extra, missing = len(set(predictions) - set(truth)), len(set(truth) - set(predictions))
        raise BadInputError(f"results do not match the annotations: {missing} annotated question(s) unanswered, {extra} answer(s) to unknown questions")
    if questions_path is not None:
        _check_questions(questions_path, set(truth))
    return [
        {"id": qid, "pred": predictions[qid], "answers": [a["answer"] for a in ann["answers"]],
         "answer_type": ann.get("answer_type"), "question_type": ann.get("question_type")}
        for qid, ann in truth.items()
    ]


def _check_questions(questions_path: str | Path, question_ids: set) -> None:
    """The official questions file must list exactly the annotated questions."""
    questions = read_json(questions_path, "VQA questions")
    if not isinstance(questions, dict) or not isinstance(questions.get("questions"), list):
        raise BadInputError(f"VQA questions file {questions_path} must hold an object with a 'questions' list")
    listed = {q.get("question_id") for q in questions["questions"] if isinstance(q, dict)}
    if listed != question_ids:
        raise BadInputError(f"questions file {questions_path} lists {len(listed)} questions but the annotations have {len(question_ids)} (ids differ)")
