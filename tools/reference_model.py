"""Train the shipped reference model (`make reference-model`) and write its receipt.

One DeepSeek-V3-architecture model (the `smoke` size) pretrained on CPU on the permissively licensed part of
the environment corpus to about 20 tokens per parameter (Chinchilla: Hoffmann et al. 2022, Table 3), with the
cookbook's own Trainer, TrainingMonitor and checkpoints. Chapters after 04 start from it in `smoke`
(`cookbook.models.reference()`).

    python tools/reference_model.py measure            # tokens/s on this machine and the projected wall time
    python tools/reference_model.py train              # resumable: re-run it to continue from the last checkpoint
    python tools/reference_model.py ship               # evaluate, write weights + tokenizer + receipt

`train --until N` stops after step N (a checkpoint is written there), so the run can go in pieces.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import datasets
import pandas as pd
import torch
from safetensors.torch import save_file

from cookbook import checkpoint, env, evaluate, models, planning, plots, profiles
from cookbook.data import corpus, licences, sources, tokenizer
from cookbook.monitor import TrainingMonitor
from cookbook.train import TrainConfig, Trainer, loader, pretrained

ROOT = Path(__file__).resolve().parent.parent
FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "heldout.safetensors")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights (recorded in every checkpoint's folder and the receipt)."""

    size: str = "smoke"  # a name from cookbook.models.CONFIGS
    corpus: str = "environment"  # environment (permissive packages) | stdlib (tests: small and fast)
    vocab_size: int = 2048
    seq_len: int = 256
    batch_size: int = 16
    tokens_per_param: float = 20.0  # Chinchilla's compute-optimal ratio
    lr: float = 3e-3
    warmup_fraction: float = 0.05
    steps: int | None = None  # None: tokens_per_param x parameters / tokens per step
    checkpoint_interval: int = 200
    eval_points: int = 25  # validation passes over the run
    data_fraction: float = 1.0  # share of the corpus's documents used (tests: a small one)


def _documents(recipe: Recipe, work: Path):
    """The corpus the recipe trains on and the licence table of its packages (None for the stdlib), frozen in
    `work` at the first call: installing a package later changes the environment, never a run in progress."""
    frozen, table_file = work / "corpus", work / "licences.json"
    if not frozen.exists():
        if recipe.corpus == "stdlib":
            docs, table = corpus.load(), None
        else:
            docs, table = licences.permissive_only(sources.environment())
            # the smoke profile's held-out stdlib files stay unseen, so the chapters that start from this model
            # in smoke report honest held-out figures
            unseen = {f"stdlib/{path}" for path in corpus.split(corpus.load())["validation"]["path"]}
            docs = docs.filter(lambda batch: [p not in unseen for p in batch["path"]], batched=True)
        with env.quiet_progress():
            docs.save_to_disk(str(frozen))
        table_file.write_text(json.dumps(table, indent=1))
    return datasets.load_from_disk(str(frozen)), json.loads(table_file.read_text())


def _profile(recipe: Recipe, max_train_tokens: int | None) -> profiles.Profile:
    """The recipe as a cookbook profile, so tokenizer and blocks come from the library's own cached builders."""
    smoke = profiles.profile("smoke")
    data = profiles.DataSizes(vocab_size=recipe.vocab_size, tokenizer_fraction=0.1 * recipe.data_fraction,
                              data_fraction=recipe.data_fraction,
                              seq_len=recipe.seq_len, semantic_sample=0, corpus=recipe.corpus,
                              max_train_tokens=max_train_tokens)
    return dataclasses.replace(smoke, name=f"reference-{recipe.size}", data=data)


def _plan(recipe: Recipe, vocab: int) -> tuple[int, int]:
    """(parameters, optimizer steps) for the recipe's token budget."""
    params = planning.count_params(models.config(recipe.size, vocab))["total"]
    steps = recipe.steps or math.ceil(recipe.tokens_per_param * params / (recipe.batch_size * recipe.seq_len))
    return params, steps


def prepare(recipe: Recipe, work: Path):
    """(documents, licence table, profile, tokenizer, blocks): tokenised once and cached by the library."""
    docs, table = _documents(recipe, work)
    tok = tokenizer.for_profile(_profile(recipe, None), docs)
    params, steps = _plan(recipe, len(tok))
    profile = _profile(recipe, steps * recipe.batch_size * recipe.seq_len)
    blocks = tokenizer.blocks_for_profile(profile, tok, docs, num_proc=min(4, os.cpu_count() or 1))
    return docs, table, profile, tok, blocks


class _Until:
    """Stops the run after optimizer step `until` (checked before the step, so that step still completes)."""

    def __init__(self, until: int | None):
        self.until = until

    def on_after_backward(self, trainer, loss) -> None:
        if self.until is not None and trainer.step + 1 >= self.until:
            trainer.should_stop, trainer.stop_reason = True, f"--until {self.until}"


def trainer_for(recipe: Recipe, work: Path, tok, blocks, until: int | None = None) -> Trainer:
    """The recipe's Trainer with its monitor, resumed from the newest checkpoint in `work` if there is one."""
    _, steps = _plan(recipe, len(tok))
    model = models.build(recipe.size, len(tok), seed=0)
    config = TrainConfig(steps=steps, lr=recipe.lr, warmup_fraction=recipe.warmup_fraction, precision="fp32",
                         eval_interval=max(1, steps // recipe.eval_points), eval_batches=8,
                         log_interval=max(1, min(25, steps // 100)), checkpoint_dir=work / "checkpoints",
                         checkpoint_interval=recipe.checkpoint_interval,
                         moe_gamma=profiles.profile("smoke").train.moe_gamma, seed=0)
    # no early stopping: the budget is the recipe's; alerts still print and land in the JSONL log
    monitor = TrainingMonitor(log_dir=work / "logs", stop_on=(), hardware=False, layer_every=25)
    trainer = Trainer(model, loader(blocks["train"], recipe.batch_size, seed=0),
                      loader(blocks["validation"], recipe.batch_size, shuffle=False, drop_last=False), config,
                      callbacks=[monitor, _Until(until)])
    latest = checkpoint.latest(work / "checkpoints")
    if latest is not None:
        trainer.load_checkpoint(latest)
        print(f"resumed from {latest.name} (step {trainer.step} of {steps})")
    return trainer


def _check_recipe(recipe: Recipe, work: Path) -> None:
    """A work folder belongs to one recipe: resuming it with other settings would mix two runs."""
    work.mkdir(parents=True, exist_ok=True)
    saved = work / "recipe.json"
    mine = dataclasses.asdict(recipe)
    if saved.exists():
        theirs = json.loads(saved.read_text())
        defaults = {f.name: f.default for f in dataclasses.fields(Recipe)}  # a field added later, at its default
        changed = {k: (theirs.get(k, defaults[k]), v) for k, v in mine.items() if theirs.get(k, defaults[k]) != v}
        if changed:
            raise SystemExit(f"{work} holds a run with other settings {changed} (saved, given): use another "
                             "--work folder or the saved settings")
    else:
        saved.write_text(json.dumps(mine, indent=1))


def train(recipe: Recipe, work: Path, until: int | None = None) -> Trainer:
    _check_recipe(recipe, work)
    _, _, _, tok, blocks = prepare(recipe, work)
    trainer = trainer_for(recipe, work, tok, blocks, until)
    start = time.perf_counter()
    trainer.fit()
    if trainer.should_stop and trainer.step < trainer.config.steps:
        trainer.save_checkpoint(work / "checkpoints" / f"step-{trainer.step:06d}.safetensors")
    with (work / "wall.jsonl").open("a") as f:  # the pieces' wall times add up to the receipt's
        f.write(json.dumps(dict(step=trainer.step, seconds=round(time.perf_counter() - start, 1),
                                threads=torch.get_num_threads())) + "\n")
    return trainer


def measure(recipe: Recipe, work: Path, steps: int) -> None:
    """Tokens/s of `steps` training steps at the recipe's shape, and the projected time of the whole run."""
    _, _, _, tok, blocks = prepare(recipe, work)
    params, total = _plan(recipe, len(tok))
    model = models.build(recipe.size, len(tok), seed=0)
    config = TrainConfig(steps=steps, lr=recipe.lr, log_interval=1, progress=False, seed=0,
                         moe_gamma=profiles.profile("smoke").train.moe_gamma)
    history = Trainer(model, loader(blocks["train"], recipe.batch_size, seed=0), None, config).fit()
    rate = history["tokens_per_s"].iloc[2:].median()  # the first steps warm up the allocator
    tokens = total * recipe.batch_size * recipe.seq_len
    print(f"{recipe.size}: {params:,} parameters, {total:,} steps = {tokens:,} tokens ({tokens / params:.1f} per "
          f"parameter); {rate:,.0f} tokens/s on {torch.get_num_threads()} threads -> {tokens / rate / 3600:.2f} h")


# ----------------------------------------------------------------------------- shipping and the receipt
def _heldout(recipe: Recipe, docs, tok, per_package: int = 8) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Up to `per_package` blocks of each held-out package: (input_ids, package index, package names)."""
    part = sources.split(docs)["validation"]
    names = sorted(set(part["package"])) if "package" in part.column_names else ["stdlib"]
    ids, owner = [], []
    for index, name in enumerate(names):
        docs_of = part if name == "stdlib" else part.filter(lambda b, n=name: [p == n for p in b["package"]],
                                                            batched=True)
        try:
            packed = tokenizer.pack(docs_of, tok, recipe.seq_len)
        except ValueError:  # a package shorter than one block
            continue
        rows = packed["input_ids"][:per_package]
        ids += rows
        owner += [index] * len(rows)
    return torch.tensor(ids, dtype=torch.int32), torch.tensor(owner, dtype=torch.int64), names


@torch.no_grad()
def block_losses(model, ids: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """Mean next-token loss of each block (float64)."""
    out = []
    for start in range(0, len(ids), batch):
        x = ids[start:start + batch].long()
        logits = model(input_ids=x).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none")
        out.append(loss.mean(1).double())
    return torch.cat(out)


def _prompts(docs, limit: int) -> list[str]:
    """Function signatures with their docstrings from held-out files: `def f(...):\n    \"\"\"...\"\"\"\n`."""
    part = sources.split(docs)["validation"]
    prompts = []
    for text in part["text"]:
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        lines = text.splitlines(keepends=True)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.col_offset == 0 and ast.get_docstring(node) \
                    and len(node.body) > 1:
                doc = node.body[0]
                prompt = "".join(lines[node.lineno - 1 - len(node.decorator_list):doc.end_lineno])
                if len(prompt) < 400:
                    prompts.append(prompt)
                break
        if len(prompts) == limit:
            break
    return prompts


def _complete(model, tok, prompt: str, tokens: int, temperature: float, seed: int) -> str:
    torch.manual_seed(seed)
    ids = torch.tensor([tok(prompt)["input_ids"]])
    sample = dict(do_sample=True, temperature=temperature, top_k=0) if temperature > 0 else dict(do_sample=False)
    out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=tok.eos_token_id, **sample)
    return tok.decode(out[0, ids.shape[1]:])


def parses(prompt: str, completion: str) -> bool:
    """Whether prompt + completion, trimmed to its last complete line, is valid Python (`ast.parse`).

    A completion without one complete non-blank line fails: the prompt alone (a def with its docstring) parses,
    and a model that writes one endless identifier has written no code."""
    cut = completion[:completion.rfind("\n") + 1]
    if not cut.strip():
        return False
    try:
        ast.parse(prompt + cut)
    except SyntaxError:
        return False
    return True


def _pass_at_k(model, tok, samples: int = 10, temperature: float = 0.8) -> dict:
    """Sandboxed pass@1 and pass@5 on notebook 13's tasks (`evaluate.TASKS`): `samples` bodies per task."""
    prompts = [t.prompt for t in evaluate.TASKS]
    bodies = evaluate.complete(model, tok, prompts, samples=samples, max_new_tokens=64, temperature=temperature)
    candidates = {t.name: [t.prompt + b for b in bs] for t, bs in zip(evaluate.TASKS, bodies, strict=True)}
    table, summary = evaluate.execution_pass_at_k(candidates, {t.name: t.tests for t in evaluate.TASKS}, ks=(1, 5))
    return dict(tasks=len(prompts), samples=samples, temperature=temperature, isolation="bubblewrap",
                passed=int(table["c"].sum()), **{k: round(v, 4) for k, v in summary.items()},
                statuses=table[list(evaluate.STATUSES)].sum().astype(int).to_dict())


def _curve(work: Path) -> pd.DataFrame:
    """Loss and validation loss per logged step from the monitor's log (a resumed piece's repeats dropped)."""
    rows = [json.loads(line) for line in (work / "logs" / "metrics.jsonl").read_text().splitlines()]
    df = pd.DataFrame([r for r in rows if "step" in r and "loss" in r])
    keep = [c for c in ("step", "loss", "val_loss", "tokens_per_s", "lr") if c in df]
    return df[keep].drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)


def _bits_per_byte(losses: torch.Tensor, ids: torch.Tensor, tok) -> float:
    """Nats per token -> bits per byte of the text the blocks decode to: comparable across tokenizers."""
    nbytes = sum(len(tok.decode(row[1:].tolist()).encode()) for row in ids)
    return float(losses.sum() * (ids.shape[1] - 1) / nbytes / math.log(2))


def _smoke_baseline(ids: torch.Tensor, tok) -> dict:
    """The 60-step `smoke` model of notebook 04 on the same held-out text (its own tokenizer): bits per byte."""
    model, smoke_tok = pretrained(profile="smoke")
    text = [tok.decode(row.tolist()) for row in ids]
    seq = profiles.profile("smoke").data.seq_len
    stream = [t for doc in text for t in [*smoke_tok(doc)["input_ids"], smoke_tok.eos_token_id]]
    blocks = torch.tensor(stream[:len(stream) // seq * seq]).view(-1, seq)
    losses = block_losses(model, blocks)
    return dict(loss=round(float(losses.mean()), 4), bits_per_byte=round(_bits_per_byte(losses, blocks, smoke_tok), 4))


def ship(recipe: Recipe, work: Path, out: Path, prompts: int = 40) -> dict:
    """Evaluate the finished run and write weights, tokenizer, held-out blocks and the receipt into `out`."""
    docs, table, _, tok, blocks = prepare(recipe, work)
    trainer = trainer_for(recipe, work, tok, blocks)
    if trainer.step < trainer.config.steps:
        raise SystemExit(f"the run in {work} is at step {trainer.step} of {trainer.config.steps}: train first")
    model = trainer.model.to("cpu").eval()
    if trainer.balancer is not None:
        trainer.balancer.remove()
    ids, owner, names = _heldout(recipe, docs, tok)
    losses = block_losses(model, ids)
    per_package = {names[i]: round(float(losses[owner == i].mean()), 4) for i in owner.unique().tolist()}

    texts = _prompts(docs, prompts)
    greedy = [_complete(model, tok, p, 64, 0.0, 0) for p in texts]
    sampled = [_complete(model, tok, p, 64, 0.8, i) for i, p in enumerate(texts[:3])]
    passing = _pass_at_k(model, tok)
    walls = [json.loads(line) for line in (work / "wall.jsonl").read_text().splitlines()]
    params, steps = _plan(recipe, len(tok))
    curve = _curve(work)
    receipt = dict(
        command="make reference-model  # python tools/reference_model.py train && ... ship",
        commit=env.commit(), recipe=dataclasses.asdict(recipe), parameters=params, steps=steps,
        tokens_seen=steps * recipe.batch_size * recipe.seq_len,
        corpus=dict(fingerprint=corpus.fingerprint(docs), documents=len(docs), mb=round(sum(docs["bytes"]) / 1e6, 1)
                    if "bytes" in docs.column_names else None, train_blocks=len(blocks["train"]),
                    validation_blocks=len(blocks["validation"]), heldout_packages=len(per_package)),
        licences=table,
        machine=dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
                     threads=sorted({w["threads"] for w in walls}), torch=torch.__version__,
                     python=platform.python_version()),
        wall_hours=round(sum(w["seconds"] for w in walls) / 3600, 2), pieces=len(walls),
        heldout=dict(loss=round(float(losses.mean()), 4), perplexity=round(math.exp(float(losses.mean())), 2),
                     bits_per_byte=round(_bits_per_byte(losses, ids, tok), 4), blocks=len(ids),
                     per_package=per_package, smoke_60_steps=_smoke_baseline(ids, tok)),
        completions=dict(prompts=len(texts), tokens=64,
                         parse_rate=round(sum(map(parses, texts, greedy)) / len(texts), 3),
                         greedy=[dict(prompt=p, completion=c) for p, c in zip(texts[:3], greedy[:3], strict=True)],
                         sampled=[dict(prompt=p, completion=c, temperature=0.8, seed=i)
                                  for i, (p, c) in enumerate(zip(texts[:3], sampled, strict=True))]),
        pass_at_k=passing,
        curve=curve.round(4).to_dict(orient="list"),
    )
    out.mkdir(parents=True, exist_ok=True)
    with env.quiet_progress():
        model.save_pretrained(str(out))
        tok.save_pretrained(str(out))
    for extra in ("generation_config.json", "special_tokens_map.json"):
        (out / extra).unlink(missing_ok=True)  # not needed to load: fewer files to checksum
    save_file({"input_ids": ids, "package": owner}, str(out / "heldout.safetensors"),
              metadata={"packages": json.dumps(names)})
    receipt["files"] = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in FILES}
    (out / "receipt.json").write_text(json.dumps(receipt, indent=1) + "\n")
    plots.loss_curves(curve, title="reference model").savefig(out / "loss_curve.png", dpi=80)
    (out / "RECEIPT.md").write_text(_markdown(receipt))
    return receipt


def _markdown(r: dict) -> str:
    h, c = r["heldout"], r["completions"]
    kept = [row for row in r["licences"] or [] if row["kept"]]
    dropped = [row for row in r["licences"] or [] if not row["kept"]]
    lines = [
        "# Reference model receipt", "",
        f"`{r['command']}` at commit `{r['commit']}`: a {r['parameters']:,}-parameter DeepSeek-V3-architecture "
        f"model (`{r['recipe']['size']}` size, vocabulary {r['recipe']['vocab_size']}) trained for {r['steps']:,} "
        f"steps on {r['tokens_seen']:,} tokens ({r['tokens_seen'] / r['parameters']:.1f} per parameter) in "
        f"{r['wall_hours']} h on {r['machine']['cores']} CPU cores ({r['pieces']} piece(s); torch "
        f"{r['machine']['torch']}, Python {r['machine']['python']}).", "",
        f"Corpus: {r['corpus']['documents']:,} documents ({r['corpus']['mb']} MB), fingerprint "
        f"`{r['corpus']['fingerprint']}`; {r['corpus']['train_blocks']:,} training blocks.", "",
        f"Held-out packages ({h['blocks']} blocks, never trained on): loss {h['loss']} (perplexity "
        f"{h['perplexity']}), {h['bits_per_byte']} bits per byte; the 60-step smoke model of notebook 04 on the "
        f"same text: {h['smoke_60_steps']['bits_per_byte']} bits per byte (loss {h['smoke_60_steps']['loss']} with "
        "its own tokenizer).", "",
        "| held-out package | loss |", "|---|---|",
        *[f"| {name} | {loss} |" for name, loss in h["per_package"].items()], "",
        f"Greedy 64-token completions of {c['prompts']} held-out function signatures with docstrings that parse "
        f"with `ast` after trimming to the last complete line: {c['parse_rate']:.0%}.", "",
        f"Sandboxed pass@k on notebook 13's {r['pass_at_k']['tasks']} tasks ({r['pass_at_k']['samples']} bodies each at "
        f"T={r['pass_at_k']['temperature']}, bubblewrap): pass@1 {r['pass_at_k']['pass@1']}, pass@5 "
        f"{r['pass_at_k']['pass@5']}; outcomes {r['pass_at_k']['statuses']}.", "",
        "![loss curve](loss_curve.png)", "",
    ]
    for kind in ("greedy", "sampled"):
        for ex in c[kind]:
            lines += [f"**{kind}**{' (T=0.8)' if kind == 'sampled' else ''}:", "", "```python",
                      ex["prompt"] + ex["completion"], "```", ""]
    lines += [f"Licences: trained on {len(kept)} packages with permissive licences; left out {len(dropped)}.", "",
              "| package | distribution | licence | documents | used |", "|---|---|---|---|---|",
              *[f"| {x['package']} | {x['distribution']} | {x['licence']} | {x['documents']} | "
                f"{'yes' if x['kept'] else 'no'} |" for x in r["licences"] or []], ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("measure", "train", "ship"))
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "reference-model",
                        help="checkpoints and logs (resumed from here)")
    parser.add_argument("--out", type=Path, default=ROOT / "cookbook" / "models" / "reference_files")
    parser.add_argument("--until", type=int, default=None, help="train: stop after this step (a checkpoint)")
    parser.add_argument("--measure-steps", type=int, default=12)
    # one thread: on 2 shared cores a second OpenMP thread mostly waits at barriers (measured 2.5k vs 7.4k tokens/s
    # with other jobs running); the thread count also fixes the float reduction order a resume must repeat
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    for field in dataclasses.fields(Recipe):
        kind = int if field.name in ("steps",) else type(field.default)
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=field.default)
    args = parser.parse_args(argv)
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})
    torch.set_num_threads(args.threads)
    if args.command == "measure":
        _check_recipe(recipe, args.work)
        measure(recipe, args.work, args.measure_steps)
    elif args.command == "train":
        train(recipe, args.work, args.until)
    else:
        receipt = ship(recipe, args.work, args.out)
        print(json.dumps({k: receipt[k] for k in ("parameters", "tokens_seen", "wall_hours", "heldout")}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
