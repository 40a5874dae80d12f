"""`mosaics-lab generate`: sampling from a trained run."""

import torch

from mosaics_lab.cli import main
from mosaics_lab.config import load_recipe
from mosaics_lab.evaluation.generate import sample
from mosaics_lab.models import build_model
from mosaics_lab.models.gpt2 import GPT2Config
from mosaics_lab.training.run import train
from tests.conftest import REPO, tiny_overrides


def test_greedy_sampling_follows_the_argmax_and_respects_the_context_limit():
    torch.manual_seed(0)
    model = build_model(GPT2Config(vocab_size=11, block_size=8, n_layer=1, n_head=1, n_embd=8)).eval()
    prompt = torch.tensor([[1, 2, 3]])
    out = sample(model, prompt, max_new_tokens=12, temperature=0, max_context=model.max_context)
    assert out.shape == (1, 15) and torch.equal(out[:, :3], prompt)
    expected = model(out[:, 6:14])[:, -1].argmax(-1)  # the last choice saw only the last 8 tokens
    assert out[0, -1] == expected[0]


def test_top_k_one_is_greedy():
    torch.manual_seed(0)
    model = build_model(GPT2Config(vocab_size=11, block_size=16, n_layer=1, n_head=1, n_embd=8)).eval()
    prompt = torch.tensor([[4, 5]])
    greedy = sample(model, prompt, 6, temperature=0)
    top1 = sample(model, prompt, 6, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(greedy, top1)


def test_generate_cli_prints_samples_from_a_trained_run(stories_dir, tmp_path, capsys):
    run = train(
        load_recipe(REPO / "recipes" / "llama_tiny.yaml", tiny_overrides(stories_dir, tmp_path / "r"))
    )
    capsys.readouterr()
    code = main(["generate", str(run), "--prompt", "Once", "--max-new-tokens", "5", "--num-samples", "2"])
    out = capsys.readouterr().out
    assert code == 0 and out.count("--- sample") == 2 and "Once" in out
