"""Code-generation evaluation data: a small task set with hidden tests, held-out functions, sampled completions.

    tasks = TASKS                                   # prompt (signature + docstring), a reference body, hidden tests
    pairs = held_out_functions(validation_texts)    # (prompt, real body) of functions the model never saw
    bodies = complete(model, tok, [t.prompt for t in tasks], samples=5, temperature=0.8)

A completion is the model's continuation of a prompt cut where the function ends (the first non-empty line
indented less than the body), so BLEU compares bodies with bodies and the sandbox runs whole functions.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Sequence

import torch

from cookbook import env
from cookbook.checks import positive_int

__all__ = ["TASKS", "Task", "complete", "function_body_end", "held_out_functions"]


@dataclasses.dataclass(frozen=True)
class Task:
    """A function to write: `prompt` (signature + docstring), a correct `solution` body, hidden `tests`."""

    name: str
    prompt: str
    solution: str
    tests: str

    @property
    def program(self) -> str:
        """The prompt completed with the reference solution: a program that passes its tests."""
        return self.prompt + self.solution


def _task(name: str, signature: str, doc: str, solution: str, tests: str) -> Task:
    return Task(name, f"def {signature}:\n    \"\"\"{doc}\"\"\"\n", solution, tests)


# HumanEval-style (Chen et al. 2021), small enough for a CPU smoke run; the tests are hidden from the model.
TASKS: tuple[Task, ...] = (
    _task("add", "add(a, b)", "Return the sum of a and b.", "    return a + b\n",
          "assert add(2, 3) == 5\nassert add(-4, 4) == 0\nassert add(0.5, 0.25) == 0.75\n"),
    _task("is_even", "is_even(n)", "Return True if the integer n is even.", "    return n % 2 == 0\n",
          "assert is_even(4) and is_even(0) and is_even(-2)\nassert not is_even(7) and not is_even(-3)\n"),
    _task("maximum", "maximum(items)", "Return the largest element of a non-empty list.",
          "    best = items[0]\n    for item in items[1:]:\n        if item > best:\n            best = item\n"
          "    return best\n",
          "assert maximum([3, 9, 2]) == 9\nassert maximum([-5, -2]) == -2\nassert maximum([7]) == 7\n"),
    _task("reverse_words", "reverse_words(text)", "Return the words of text in reverse order, joined by spaces.",
          "    return ' '.join(text.split()[::-1])\n",
          "assert reverse_words('a b c') == 'c b a'\nassert reverse_words('one') == 'one'\n"
          "assert reverse_words('') == ''\n"),
    _task("count_vowels", "count_vowels(text)", "Return how many characters of text are vowels (aeiou, any case).",
          "    return sum(1 for ch in text.lower() if ch in 'aeiou')\n",
          "assert count_vowels('Hello World') == 3\nassert count_vowels('xyz') == 0\nassert count_vowels('AEIOU') == 5\n"),
    _task("factorial", "factorial(n)", "Return n! for a non-negative integer n.",
          "    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result\n",
          "assert factorial(0) == 1\nassert factorial(5) == 120\nassert factorial(10) == 3628800\n"),
    _task("is_palindrome", "is_palindrome(text)", "Return True if text reads the same backwards.",
          "    return text == text[::-1]\n",
          "assert is_palindrome('level') and is_palindrome('')\nassert not is_palindrome('python')\n"),
    _task("unique", "unique(items)", "Return the items without duplicates, in the order they first appear.",
          "    seen = []\n    for item in items:\n        if item not in seen:\n            seen.append(item)\n"
          "    return seen\n",
          "assert unique([1, 2, 1, 3, 2]) == [1, 2, 3]\nassert unique([]) == []\nassert unique('aab') == ['a', 'b']\n"),
)


def function_body_end(text: str) -> str:
    """`text` up to the end of the function body it continues: cut before the first non-empty line that is
    not indented (a new top-level statement), so the rest of a sampled module does not reach the tests."""
    kept = []
    for line in text.splitlines(keepends=True):
        if line.strip() and not line[0].isspace():
            break
        kept.append(line)
    return "".join(kept).rstrip() + "\n" if "".join(kept).strip() else ""


def held_out_functions(texts: Sequence[str], *, limit: int, max_body_lines: int = 12) -> list[tuple[str, str]]:
    """(prompt, body) of top-level functions with a docstring, from documents the model did not train on.

    The prompt is the source from `def` to the end of the docstring, the body the rest (1 to
    `max_body_lines` lines); decorated functions are skipped. In document order, at most `limit`. Pass the
    validation split (held-out files or packages) for an honest score. Shown in notebooks/13 §1.
    """
    positive_int("limit", limit)
    positive_int("max_body_lines", max_body_lines)
    out = []
    for text in texts:
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):  # a file for another Python version: not a source of examples
            continue
        lines = text.splitlines(keepends=True)
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.decorator_list or ast.get_docstring(node) is None \
                    or len(node.body) < 2:
                continue
            doc_end, end = node.body[0].end_lineno, node.end_lineno
            if not 1 <= end - doc_end <= max_body_lines:
                continue
            out.append(("".join(lines[node.lineno - 1:doc_end]), "".join(lines[doc_end:end])))
            if len(out) == limit:
                return out
    return out


@torch.no_grad()
def complete(model, tokenizer, prompts: Sequence[str], *, samples: int = 1, max_new_tokens: int = 64,
             temperature: float = 0.0, seed: int = 0, device=None) -> list[list[str]]:
    """`samples` completions of each prompt (ending in a newline), each cut at the end of the function body.

    A completion is the body only (`function_body_end`): `prompt + completion` is the program to run.

    temperature 0 is greedy decoding (then `samples` must be 1); above 0, samples are drawn with that
    temperature from a generator seeded with `seed`, so a run repeats exactly. Shown in notebooks/13 §1.
    """
    positive_int("samples", samples)
    positive_int("max_new_tokens", max_new_tokens)
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature!r}")
    if temperature == 0 and samples > 1:
        raise ValueError(f"greedy decoding (temperature 0) gives one completion per prompt, not samples={samples}")
    device = torch.device(device) if device is not None else env.device()
    model = model.to(device).eval()
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else \
        dict(do_sample=False)
    out = []
    for i, prompt in enumerate(prompts):
        # The prompt ends with a newline; its BPE token alone rarely occurs in training text (a newline merges
        # with the next line's indentation), so the model continues from the docstring's last character instead.
        ids = torch.tensor([tokenizer(prompt.rstrip())["input_ids"]], device=device)
        torch.manual_seed(seed * 1_000_003 + i)  # each prompt's samples depend on (seed, prompt index) only
        generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                   num_return_sequences=samples, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id, **sampling)
        texts = tokenizer.batch_decode(generated[:, ids.shape[1]:], skip_special_tokens=True)
        out.append([function_body_end(t.partition("\n")[2]) for t in texts])  # from the line after the prompt
    return out
