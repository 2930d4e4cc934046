"""The case study's optional extras (gensim, pyspark): imported on first use, or an error that says how to get them."""

import sys

import pytest

from cookbook.casestudy import embeddings, spark


@pytest.mark.parametrize("require, blocked, hint", [
    (embeddings.require_gensim, ["gensim", "gensim.models"], r"pip install 'cookbook\[casestudy\]' \(or gensim>=4\.4\)"),
    (spark.require_pyspark, ["pyspark", "pyspark.sql"], r"pyspark and Java 17\+: pip install 'cookbook\[spark\]'"),
])
def test_a_missing_extra_names_its_install_command(monkeypatch, require, blocked, hint):
    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)  # what Python does for a package that is not installed
    with pytest.raises(ImportError, match=hint) as caught:
        require()
    assert isinstance(caught.value.__cause__, ImportError)  # the original import error is kept


def test_an_installed_extra_is_returned():
    word2vec = pytest.importorskip("gensim.models").Word2Vec
    assert embeddings.require_gensim() is word2vec
