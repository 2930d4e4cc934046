import pytest
import torch

from cookbook import deploy

PROMPTS = ["def add(a, b):", "import json\nx = json.loads(s)", "class A:"]


def _ids(tok):
    return [tok.encode(p, add_special_tokens=False) for p in PROMPTS]


def _hf_greedy(model, ids, n):
    """transformers' own generate(), greedy: the independent reference."""
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=1)
    return out[0, len(ids):].tolist()


def test_single_prompt_greedy_matches_transformers_generate(moe, tok):
    ids = _ids(tok)[0]
    [got] = deploy.generate(moe, [ids], [7])
    assert got.tokens == _hf_greedy(moe, ids, 7)
    assert got.finish_reason == "length"


@pytest.mark.parametrize("name", ["moe", "dense"])
def test_left_padded_batch_equals_each_prompt_alone(request, tok, name):
    model = request.getfixturevalue(name)
    prompts, budgets = _ids(tok), [6, 3, 5]
    assert len({len(p) for p in prompts}) == 3  # different lengths: the batch is padded
    batched = deploy.generate(model, prompts, budgets)
    alone = [deploy.generate(model, [p], [n])[0] for p, n in zip(prompts, budgets, strict=True)]
    assert batched == alone
    assert [len(g.tokens) for g in batched] == budgets


def test_sampling_is_seeded_per_row_whatever_shares_the_batch(moe, tok):
    a, b, c = _ids(tok)
    first = deploy.generate(moe, [a, b], [8, 8], temperatures=[1.0, 0.0], seeds=[7, 0])
    again = deploy.generate(moe, [c, a], [8, 8], temperatures=[0.0, 1.0], seeds=[0, 7])
    assert first[0] == again[1]  # same prompt, temperature and seed: same text
    other_seed = deploy.generate(moe, [a], [8], temperatures=[1.0], seeds=[8])
    assert other_seed[0].tokens != first[0].tokens


def test_end_of_text_and_stop_end_a_row_early(moe, tok):
    ids = _ids(tok)[0]
    greedy = deploy.generate(moe, [ids], [5])[0].tokens
    [stopped] = deploy.generate(moe, [ids], [5], eos_id=greedy[2])  # the third token plays end-of-text
    assert stopped == deploy.Generation(greedy[:2], "stop")
    [cancelled] = deploy.generate(moe, [ids], [5], stop=lambda i: True)
    assert cancelled == deploy.Generation(greedy[:1], "cancelled")


def test_bad_arguments_are_named(moe):
    with pytest.raises(ValueError, match="2 prompts and 1 max_tokens"):
        deploy.generate(moe, [[1, 2], [3]], [4])
    with pytest.raises(ValueError, match="at least one token"):
        deploy.generate(moe, [[]], [4])
