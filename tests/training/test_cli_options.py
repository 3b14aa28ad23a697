"""Every ``mulcot distill`` / ``mulcot data`` verb's options come from one generator
(``training.options.Options``) over its stage's config models: each option's help is the
field's description and its default the field's default; the option names of before the
generator still work (as the flag or as an alias); values left out do not override a recipe."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from pydantic import Field

from training.cli import data, distill
from training.options import Options
from training.recipe import StrictModel

#: The options each verb had before its options were generated (issue 24): all still accepted.
OLD_OPTIONS = {
    "teacher": "--recipe --set --data --out --backend --model --base-url --api-key-env --max-guided --concurrency "
               "--rps --max-retries --max-tokens --price-in --price-out --limit --all",
    "assistant": "--model --train --dev --out --epochs --lr --batch-size --grad-accum --max-steps --image-size "
                 "--lora-r --lora-alpha --modules-to-save --limit --seed --cpu --mixed-precision --recipe --set",
    "student": "--model --assistant --train --dev --out --lam --T --epochs --lr --batch-size --grad-accum "
               "--max-steps --image-size --lora-r --lora-alpha --modules-to-save --limit --seed --cpu "
               "--mixed-precision --recipe --set",
    "augment": "--assistant --data --out --samples --temperature --max-new-tokens --image-size --limit --seed "
               "--merge-with --merged --recipe --set",
    "evaluate": "--student --data --out --limit --batch-size --no-chain --no-embeddings --train-log "
                "--image-max-side --option --grounding --grounding-limit",
    "run": "--dry-run --stage --set --schema",
    "compact": "--stage --export --version --set --schema --epochs --lam --no-calibrate --out --threads --limit",
}

#: Old defaults that must not have moved.
OLD_DEFAULTS = {
    ("teacher", "max_concurrency"): 8, ("teacher", "max_guided"): 2, ("teacher", "max_retries"): 4,
    ("teacher", "max_tokens"): 768, ("teacher", "model"): "Qwen/Qwen2.5-VL-72B-Instruct",
    ("teacher", "api_key_env"): "OPENAI_API_KEY", ("teacher", "backend"): "endpoint",
    ("assistant", "epochs"): 20, ("assistant", "grad_accum"): 10, ("assistant", "lora_r"): 16,
    ("assistant", "lora_alpha"): 32, ("assistant", "seed"): 0, ("student", "lam"): 0.3, ("student", "T"): 2.0,
    ("augment", "samples"): 2, ("augment", "temperature"): 0.7, ("augment", "max_new_tokens"): 384,
    ("evaluate", "batch_size"): 8, ("compact", "stage"): "all",
}


def _verbs():
    yield "stats", data.commands["stats"]
    for name, cmd in distill.commands.items():
        if isinstance(cmd, click.Group):
            yield from ((f"{name} {n}", c) for n, c in cmd.commands.items())
        else:
            yield name, cmd


def _opts(cmd) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}


@pytest.mark.parametrize("verb", sorted(OLD_OPTIONS))
def test_old_option_names_still_work(verb):
    missing = set(OLD_OPTIONS[verb].split()) - _opts(distill.commands[verb])
    assert not missing, f"distill {verb} lost {sorted(missing)}"


def test_old_defaults_kept():
    for (verb, param), value in OLD_DEFAULTS.items():
        p = next(p for p in distill.commands[verb].params if p.name == param)
        assert p.default == value, (verb, param, p.default)


def test_every_option_has_its_fields_description_as_help():
    """No hand-written option is left: every verb's parameters are fields of the models it was
    generated from, and each option's help starts with that field's description."""
    from training import cli
    from training.compact import select

    generated: dict[str, set[str]] = {}
    for mod in (cli, select):
        for o in vars(mod).values():
            if isinstance(o, Options):
                for param, info in _field_infos(o):
                    generated.setdefault(param, set()).add(info.description)
    for name, cmd in _verbs():
        for p in cmd.params:
            if p.name == "help":
                continue
            assert p.name in generated, f"{name}: {p.name} is not generated from a config field"
            if isinstance(p, click.Option):
                assert p.help and any(p.help.startswith(d) for d in generated[p.name]), (name, p.name)


def _field_infos(opts: Options):
    for path, param, _ in opts.fields:
        model = opts.model
        for part in path[:-1]:
            model = model.model_fields[part].annotation
        yield param, model.model_fields[path[-1]]


class _Inner(StrictModel):
    rate: float = Field(0.5, ge=0, description="A rate.")


class _Demo(StrictModel):
    name: str = Field("x", description="A name.")
    count: int = Field(3, description="A count.")
    flag: bool = Field(False, description="A flag.")
    tags: list[str] = Field(default_factory=list, description="Tags.")
    inner: _Inner = Field(default_factory=_Inner)
    mapping: dict = Field(default_factory=dict, description="Left to the recipe file.")


def test_given_options_only_and_nested_build():
    opts = Options(_Demo, aliases={"count": "--n"}, prefixes={"inner": "in_"})
    seen = {}

    @click.command()
    @opts
    def cmd(**kw):
        seen["given"] = opts.given(kw)
        seen["built"] = opts.build(kw, base={"name": "from-file", "count": 7})

    assert "--mapping" not in _opts(cmd) and {"--n", "--in-rate", "--flag", "--tags"} <= _opts(cmd)
    res = CliRunner().invoke(cmd, ["--n", "5", "--in-rate", "0.25", "--tags", "a", "--tags", "b"])
    assert res.exit_code == 0, res.output
    assert seen["given"] == {"count": 5, "inner": {"rate": 0.25}, "tags": ["a", "b"]}
    b = seen["built"]
    assert (b.name, b.count, b.inner.rate, b.tags, b.flag) == ("from-file", 5, 0.25, ["a", "b"], False)
    res = CliRunner().invoke(cmd, ["--in-rate", "-1"])
    assert res.exit_code != 0 and "--in-rate" in res.output  # the pydantic bound, named by its flag


def test_teacher_aliases_reach_the_config(tmp_path: Path):
    """``--concurrency`` and ``--rps`` (the old names) set TeacherConfig's fields; the verb
    refuses an endpoint teacher without a base URL before reading anything."""
    from training.cli import _TEACHER

    seen = {}

    @click.command()
    @_TEACHER
    def cmd(**kw):
        seen["cfg"] = _TEACHER.build(kw)

    res = CliRunner().invoke(cmd, ["--concurrency", "3", "--rps", "1.5", "--price-in", "2"])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert (cfg.max_concurrency, cfg.requests_per_s, cfg.price_prompt_per_mtok, cfg.max_guided) == (3, 1.5, 2.0, 2)
    res = CliRunner().invoke(distill, ["teacher", "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "--base-url is required" in res.output
    res = CliRunner().invoke(distill, ["assistant", "--model", "m"])
    assert res.exit_code != 0 and "--model, --train, --dev and --out are required without --recipe" in res.output
