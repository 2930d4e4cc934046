import pytest

from cookbook import models
from cookbook.evaluate import codegen, execution
from tests.blocks import VOCAB

SOURCE = '''import os


def documented(a, b):
    """Add two numbers."""
    total = a + b
    return total


@decorated
def skipped(x):
    """Decorated: left out."""
    return x


def no_docstring(x):
    return x


class Thing:
    def method(self):
        """Not top level."""
        return 1


def long_body(x):
    """Too long for max_body_lines=2."""
    y = x
    y = y + 1
    return y
'''


def test_every_task_solution_passes_and_an_empty_body_fails():
    candidates = {t.name: [t.program] for t in codegen.TASKS}
    candidates["add"].append(codegen.TASKS[0].prompt + "    return None\n")
    table, summary = execution.execution_pass_at_k(candidates, {t.name: t.tests for t in codegen.TASKS}, ks=(1,))
    assert (table.c == 1).all() and table.loc["add", "failed"] == 1  # None == 3 is False
    assert summary == pytest.approx({"pass@1": 1 - 0.5 / len(codegen.TASKS)})
    assert len({t.name for t in codegen.TASKS}) == len(codegen.TASKS)


def test_held_out_functions_split_prompt_and_body():
    pairs = codegen.held_out_functions([SOURCE, "def broken(:\n"], limit=5, max_body_lines=2)
    assert pairs == [('def documented(a, b):\n    """Add two numbers."""\n', "    total = a + b\n    return total\n")]
    assert len(codegen.held_out_functions([SOURCE], limit=5, max_body_lines=3)) == 2
    with pytest.raises(ValueError, match="limit must be a positive int"):
        codegen.held_out_functions([SOURCE], limit=0)


def test_function_body_end_cuts_at_the_next_top_level_line():
    assert codegen.function_body_end("    return 1\n\n    # more\ndef other():\n    pass\n") == \
        "    return 1\n\n    # more\n"
    assert codegen.function_body_end("print('top level')\n") == ""


def test_complete_is_seeded_and_returns_bodies():
    class Tok:  # characters as ids, newline kept, as the tokenizer interface complete() uses
        pad_token_id, eos_token_id = 0, 1

        def __call__(self, text):
            return {"input_ids": [2 + ord(c) % (VOCAB - 2) for c in text]}

        def batch_decode(self, rows, skip_special_tokens=True):
            return ["\n    x = 1\n" + "".join(chr(97 + int(i) % 26) for i in row) for row in rows]

    model = models.build("tiny", VOCAB, seed=0)
    prompts = [t.prompt for t in codegen.TASKS[:2]]
    a = codegen.complete(model, Tok(), prompts, samples=3, max_new_tokens=5, temperature=1.0, seed=0, device="cpu")
    b = codegen.complete(model, Tok(), prompts, samples=3, max_new_tokens=5, temperature=1.0, seed=0, device="cpu")
    assert a == b and [len(s) for s in a] == [3, 3]
    assert all(body == "    x = 1\n" for s in a for body in s)  # cut before the unindented tail
    with pytest.raises(ValueError, match="greedy decoding"):
        codegen.complete(model, Tok(), prompts, samples=2, temperature=0)
    greedy = codegen.complete(model, Tok(), prompts, max_new_tokens=1, device="cpu")  # the defaults: 1 sample, T = 0
    assert greedy == codegen.complete(model, Tok(), prompts, max_new_tokens=1, device="cpu") == [["    x = 1\n"]] * 2
    for bad, match in [({"samples": 0}, "samples must be a positive int"),
                       ({"max_new_tokens": 0}, "max_new_tokens must be a positive int"),
                       ({"temperature": -0.1}, r"temperature must be >= 0 \(0: greedy\), got -0.1"),
                       ({"temperature": float("nan")}, "temperature must be >= 0")]:
        with pytest.raises(ValueError, match=match):
            codegen.complete(model, Tok(), prompts, **bad)


def test_function_body_end_keeps_indented_and_blank_lines_and_ends_with_one_newline():
    assert codegen.function_body_end("    return 1") == "    return 1\n"  # no final newline: one added
    assert codegen.function_body_end("    a = 1\n  \n\n\tb = 2\n\n\nx = 1\n") == "    a = 1\n  \n\n\tb = 2\n"
    assert codegen.function_body_end("x = 1\n    return 1\n") == ""  # a top-level line first: nothing
    assert codegen.function_body_end("\n  \n") == codegen.function_body_end("") == ""  # only blanks: nothing


def test_held_out_functions_edges():
    one_line = 'def f(x):\n    """Doc."""\n    return x\n'
    same_line = 'def g(x):\n    """Doc."""; return x\n'  # the body shares the docstring's line: 0 body lines
    only_doc = 'def h(x):\n    """Doc."""\n'
    head, body = 'def k(x):\n    """Doc."""\n', "    x += 1\n" * 11 + "    return x\n"  # 12 body lines, the default
    long = head + body
    assert codegen.held_out_functions([one_line, same_line, only_doc, long], limit=5) == [
        ('def f(x):\n    """Doc."""\n', "    return x\n"), (head, body)]
    assert codegen.held_out_functions([long.replace("return x", "x += 1\n    return x")], limit=5) == []  # 13
    assert codegen.held_out_functions([one_line, long], limit=1) == [('def f(x):\n    """Doc."""\n', "    return x\n")]
    assert codegen.held_out_functions(["x = 1\n" + one_line], limit=1)[0][0] == 'def f(x):\n    """Doc."""\n'
    # skipped functions and unparsable files do not end the scan
    undocumented = "def nd(x):\n    y = x\n    return y\n"
    texts = ["def broken(:\n", undocumented + same_line + long.replace("return x", "x += 1\n    return x") + one_line]
    assert codegen.held_out_functions(texts, limit=5) == [('def f(x):\n    """Doc."""\n', "    return x\n")]
    with pytest.raises(ValueError, match="max_body_lines must be a positive int, got 0"):
        codegen.held_out_functions([one_line], limit=1, max_body_lines=0)


def test_a_task_is_a_prompt_its_solution_completes():
    task = codegen._task("double", "double(x)", "Return 2x.", "    return 2 * x\n", "assert double(3) == 6\n")
    assert task == codegen.Task("double", 'def double(x):\n    """Return 2x."""\n', "    return 2 * x\n",
                                "assert double(3) == 6\n")
    assert task.program == 'def double(x):\n    """Return 2x."""\n    return 2 * x\n'
    assert codegen.held_out_functions([task.program], limit=1) == [(task.prompt, task.solution)]
