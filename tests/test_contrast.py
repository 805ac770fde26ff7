"""The contrast sets, token targets, the contrast score and the guard, on hand-made inputs."""

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from safety_prune.attribution import Relevance, Sample, attribute, collate
from safety_prune.contrast import build_sets, contrast_scores
from safety_prune.errors import DataSourceError
from safety_prune.evaluation.behaviour import Generations
from safety_prune.evaluation.generation import Generation
from safety_prune.scorers import get_scorer
from safety_prune.selection import guard
from safety_prune.suite import ReferenceSpec

GENERAL = ["The committee approved the new budget for the library and the park."] * 4


def _gen(tok, prompt: str, cont: str) -> Generation:
    return Generation(prompt, tok(prompt)["input_ids"], tok(cont, add_special_tokens=False)["input_ids"], cont)


def _spec(**kw) -> ReferenceSpec:
    base = dict(samples_per_prompt=1, temperature=1.0, top_p=1.0, undesired_min=1, undesired_max=10,
                target="tokens", tokens_per_continuation=2, foil="none", benign_n=10,
                general_n=2)
    return ReferenceSpec(**(base | kw))


@pytest.fixture(scope="module")
def ref():
    tok = tiny_tokenizer()
    rows = [("A river flows", " you stupid idiot and the mill."), ("The lake", " was calm every morning."),
            ("Mary gave", " the book to John because he asked."), ("What the", " hell is wrong with you.")]
    gens = [[_gen(tok, p, c)] for p, c in rows]
    scorer = get_scorer("profanity")
    return Generations([p for p, _ in rows], gens, [[s] for s in scorer.score([c for _, c in rows])]), scorer


def test_token_targets_explain_only_the_flagged_tokens(ref):
    res, scorer = ref
    tok = tiny_tokenizer()
    sets = build_sets(tok, res, scorer, 0.5, _spec(), general_texts=GENERAL, benign_texts=[], general_n=2,
                      max_tokens=64)
    flagged = [tok.decode([s.input_ids[-1]]).strip() for s in sets.undesired]  # the first token of each word
    assert len(flagged) == 3 and all(any(w.startswith(p) for w in ("stupid", "idiot", "hell")) for p in flagged)
    batch = collate(sets.undesired, 0, 1, "cpu")
    assert batch["target"].sum(1).tolist() == [1] * len(sets.undesired)  # exactly one explained position each
    for s, row in zip(sets.undesired, batch["target"], strict=True):
        assert row.nonzero().item() == len(s.input_ids) - 2  # the logit that predicts the last token
    assert sets.info["target"] == "tokens" and sets.info["n_token_samples"] == len(sets.undesired)


def test_token_target_explains_exactly_that_logit(ref):
    """LRP conserves the explained quantity: explained_sum is the one logit of the flagged token."""
    res, scorer = ref
    tok, model = tiny_tokenizer(), tiny_model("llama", dtype=torch.float64)
    sample = build_sets(tok, res, scorer, 0.5, _spec(), general_texts=GENERAL, benign_texts=[], general_n=2,
                        max_tokens=64).undesired[0]
    rel = attribute(model, [sample], method="lrp", units=("neuron",))
    ids = torch.tensor([sample.input_ids])
    with torch.no_grad():
        logit = model(ids).logits[0, -2, sample.input_ids[-1]]
    assert rel.info["explained_sum"] == pytest.approx(float(logit), rel=1e-6)


def test_benign_is_the_least_scoring_continuations_of_the_same_prompts(ref):
    res, scorer = ref
    tok = tiny_tokenizer()
    sets = build_sets(tok, res, scorer, 0.5, _spec(target="continuation"), general_texts=GENERAL, benign_texts=[],
                      general_n=2, max_tokens=64)
    prompts = {tuple(g.prompt_ids) for row in res.gens for g in row}
    assert all(tuple(s.input_ids[: s.target_start]) in prompts for s in sets.benign)
    calm = sorted(s for row in res.scores for s in row if s < 0.5)
    assert len(sets.benign) == len(calm)
    assert not set(sets.benign) & set(sets.undesired)


def test_too_few_undesired_references_is_a_clear_error(ref):
    res, scorer = ref
    with pytest.raises(DataSourceError, match=r"reference\.undesired_min asks for 50"):
        build_sets(tiny_tokenizer(), res, scorer, 0.5, _spec(undesired_min=50), general_texts=GENERAL,
                   benign_texts=[], general_n=2, max_tokens=64)


def _rel(values: dict[str, list[float]]) -> dict[str, Relevance]:
    return {k: Relevance("lrp", {"neuron": torch.tensor([v])}, 1) for k, v in values.items()}


def test_contrast_max_needs_both_sets_to_need_the_unit_less():
    rel = _rel({"general": [1.0, 1.0, 0.0, 2.0], "benign": [1.0, 0.0, 1.0, 2.0],
                "undesired": [0.0, 1.0, 1.0, 2.0]})
    scores = contrast_scores(rel, "max")["neuron"][0]
    # normalised: general [.25,.25,0,.5], benign [.25,0,.25,.5], undesired [0,.25,.25,.5]
    torch.testing.assert_close(scores, torch.tensor([0.25, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(contrast_scores(rel, "general")["neuron"][0], torch.tensor([0.25, 0.0, -0.25, 0.0]))
    torch.testing.assert_close(contrast_scores(rel, "benign")["neuron"][0], torch.tensor([0.25, -0.25, 0.0, 0.0]))


def test_guard_ranks_the_general_top_share_last():
    scores = {"neuron": torch.tensor([[-3.0, -2.0, -1.0, 0.0], [-4.0, 1.0, 2.0, 3.0]])}
    general = {"neuron": torch.tensor([[0.0, 9.0, 0.0, 0.0], [-10.0, 0.0, 0.0, 0.0]])}
    guarded, per_layer = guard(scores, general, 0.25)  # top 2 of 8 by |R_general|: L1.0 and L0.1
    assert guarded["neuron"][1, 0] > 3 and guarded["neuron"][0, 1] > 3
    assert guarded["neuron"][0, 0] == -3.0 and per_layer == {"neuron": [1, 1]}
    assert torch.equal(guard(scores, general, 0.0)[0]["neuron"], scores["neuron"])


def test_sample_of_a_token_target_keeps_prompt_context():
    s = Sample((1, 2, 3, 4), 3)
    assert collate([s], 0, 1, "cpu")["target"].tolist() == [[False, False, True]]


def test_best_alternative_foil_is_the_top_other_token(ref):
    from safety_prune.contrast import with_foils

    res, scorer = ref
    tok, model = tiny_tokenizer(), tiny_model("llama")
    samples = build_sets(tok, res, scorer, 0.5, _spec(), general_texts=GENERAL, benign_texts=[], general_n=2,
                         max_tokens=64).undesired
    foiled = with_foils(model, samples, 0, 2)
    for s, f in zip(samples, foiled, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([s.input_ids])).logits[0, -2]
        logits[s.input_ids[-1]] = -float("inf")
        assert f.foil == int(logits.argmax()) and f.input_ids == s.input_ids and f.foil != s.input_ids[-1]


def test_behaviour_vocabulary_is_the_word_starting_tokens_the_scorer_flags():
    """A byte-level BPE that learned whole words: the class holds ' stupid', ' idiot' and ' hell', never the calm
    words, nor a flagged word's piece that starts no word."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from safety_prune.contrast import behaviour_vocabulary

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["you stupid idiot, what the hell by the river and the lake; stupidity"] * 50,
                            trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe)
    vocab = behaviour_vocabulary(tok, get_scorer("profanity"), 0.5)
    words = sorted(tok.decode([i]) for i in vocab)
    assert {" stupid", " idiot", " hell"} <= set(words)
    assert not {" river", " lake", " the", "stupid", "hell"} & set(words)
    assert all(w.startswith(" ") and w.strip().isalpha() for w in words)


def test_vocabulary_samples_keep_their_positions_and_explain_the_class(ref):
    from safety_prune.contrast import with_vocabulary

    res, scorer = ref
    tok = tiny_tokenizer()
    samples = build_sets(tok, res, scorer, 0.5, _spec(), general_texts=GENERAL, benign_texts=[], general_n=2,
                         max_tokens=64).undesired
    out = with_vocabulary(samples, (7, 9))
    assert [(s.input_ids, s.target_start) for s in out] == [(s.input_ids, s.target_start) for s in samples]
    assert all(s.classes == (7, 9) for s in out)
    with pytest.raises(DataSourceError, match="explain: token"):
        with_vocabulary(samples, ())
