"""`duetmc export`: a run as a self-describing model folder with a model card.

The folder (duetmc.pretrained: `config.json`, `heads.safetensors`) gets a `README.md` model card that
says what a reader needs to trust and reproduce it: the encoders with their revisions and weight
hashes, the featurizer settings, the training data (caches, clips per split), the recipe, and the
run's evaluation results when `duetmc eval` wrote them.
"""

from __future__ import annotations

import json
from pathlib import Path

from duetmc.errors import PathError
from duetmc.pretrained import DuetModel, push_to_hub

RECIPE_KEYS = ("p_cap", "views", "swap", "swap_max", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs",
               "patience", "seed", "temperature", "learn_temperature", "dim", "transformer_layers", "heads", "dropout")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def _training_data(train: dict) -> list[dict]:
    """Each training cache with its clips per split (counted from the cache when it is still there)."""
    from duetmc import cache_spec

    out = []
    for spec in train["data"]:
        row = {"cache": spec["cache"], "weight": spec.get("weight", 1.0), "splits": {}}
        try:
            root = cache_spec.open_root(spec["cache"])
            key = cache_spec.list_groups(root, "audio")[0]
            splits = cache_spec.read_strings(root["audio"][key]["split"])
            for s in splits:
                row["splits"][s or "train"] = row["splits"].get(s or "train", 0) + 1
            row["manifest"] = dict(root["audio"][key].attrs).get("manifest")
        except Exception:  # the card still describes the run without its cache
            pass
        out.append(row)
    return out


def card_data(model: DuetModel, run: Path) -> dict:
    """Everything the model card says, as data (also stored in config.json's `card`)."""
    train = model.card.get("train", {})
    return {"run": str(run.resolve()), "checkpoint": model.card.get("checkpoint", "best"),
            "recipe": {k: train.get(k) for k in RECIPE_KEYS if k in train},
            "training_data": _training_data(train) if train else [],
            "summary": _read_json(run / "summary.json"), "best": _read_json(run / model.card.get("checkpoint", "best") / "state.json"),
            "evaluation": _read_json(run / "eval.json")}


def _eval_table(results) -> str:
    from duetmc import metrics
    from duetmc.evaluate import table_rows

    try:
        return metrics.markdown_table([table_rows("this model", r) for r in results])
    except Exception:  # an eval.json from another version: show it raw rather than fail the export
        return "```json\n" + json.dumps(results, indent=2)[:4000] + "\n```"


def model_card(model: DuetModel, card: dict) -> str:
    a, t = model.audio, model.text
    enc_rows = "\n".join(
        f"| {what} | `{e['name']}` | {e['source']} | {e.get('revision') or '-'} | `{e['weights_sha256'][:16]}…` |"
        for what, e in (("audio", a.encoder), ("text", t.encoder)))
    data_rows = "\n".join(f"| {d['cache']} | {d['weight']} | "
                          f"{', '.join(f'{k}: {v}' for k, v in sorted(d['splits'].items())) or 'cache not found'} |"
                          for d in card["training_data"]) or "| (not recorded) | | |"
    recipe = "\n".join(f"| {k} | {v} |" for k, v in card["recipe"].items())
    ev = _eval_table(card["evaluation"]) if card["evaluation"] else \
        "No evaluation results in the run directory (run `duetmc eval RUN` before exporting to include them)."
    return f"""---
library_name: duetmc
tags: [music, text-to-music-retrieval, audio, duetmc]
---

# duetmc model `{model.model_id[:12]}`

DuET-MC retrieval heads: a text and an audio embedding in one {model.dim}-d space, on top of two locked encoders.
Load it with `DuetModel.from_pretrained("<this folder or Hub id>")`, then `embed_text([...])`,
`embed_audio([...])` and `similarity(t, a)`.

## Encoders (locked; weights must hash as recorded)

| modality | name | source | revision | weights sha256 |
|---|---|---|---|---|
{enc_rows}

## Featurizer settings

- audio: {a.sample_rate} Hz mono, windows of {a.window_samples} samples every {a.hop_samples} (the last window ends at
  the track's end), {a.tokens} time-pooled tokens per window, layers {a.layers}, compute dtype {a.compute_dtype};
  a clip's embedding is the normalised mean of its windows' embeddings.
- text: layers {t.layers}, at most {t.max_tokens} tokens, compute dtype {t.compute_dtype}; languages in training:
  {', '.join(t.languages) or 'not recorded'}.

## Training data

| cache | weight | clips per split |
|---|---|---|
{data_rows}

## Recipe

| setting | value |
|---|---|
{recipe}

## Evaluation

{ev}

Model id (heads + encoders + settings): `{model.model_id}`. Exported from run `{card['run']}`
(checkpoint `{card['checkpoint']}`).
"""


def export_run(run: str | Path, out: str | Path, checkpoint: str = "best", cache: str | None = None,
               hub_repo: str | None = None, private: bool = False) -> dict:
    """Write the export folder (and push it to the Hub when `hub_repo` is given)."""
    run, out = Path(run), Path(out)
    if out.exists() and not out.is_dir():
        raise PathError(f"{out}: is a file; choose a folder for --out")
    model = DuetModel.from_run(run, checkpoint=checkpoint, cache=cache, progress=False)
    card = card_data(model, run)
    model.card = {**model.card, **card}
    model.save_pretrained(out, model_card(model, card))
    result = {"out": str(out), "model_id": model.model_id}
    if hub_repo:
        result["hub"] = push_to_hub(out, hub_repo, private=private)
    return result
