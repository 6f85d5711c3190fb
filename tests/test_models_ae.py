"""Formula checks of the autoencoders MultiDAE, RecVAE, CDAE and MacridVAE against direct (naive)
computations on tiny cases, and the mechanics they rely on (RecVAE's alternating passes, CDAE's
user node). Whether they learn on planted data is the contract suite's job."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recstudio.data.views import InputMix, build_view
from recstudio.errors import ConfigError
from recstudio.model.ae.cdae import CDAE
from recstudio.model.ae.common import reparameterize
from recstudio.model.ae.macridvae import MacridVAE
from recstudio.model.ae.multidae import MultiDAE
from recstudio.model.ae.recvae import RecVAE
from tests.test_models_general import _user_batch, eval_batch, tiny_data

# --------------------------------------------------------------------------- MultiDAE


def test_multidae_loss_is_multinomial_nll_of_a_tanh_chain() -> None:
    data = tiny_data()
    model = MultiDAE(MultiDAE.Config(hidden_dims=[6], latent_dim=3), data).eval()  # no dropout
    batch = _user_batch(data)
    x = batch["history"]
    linears = [m for m in model.network if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 6), (6, 3), (3, 6), (6, 10)]
    h = x / x.norm(dim=1, keepdim=True)
    for i, m in enumerate(linears):  # tanh after every layer but the last, bottleneck included
        h = h @ m.weight.T + m.bias
        h = torch.tanh(h) if i < len(linears) - 1 else h
    log_p = h - torch.log(torch.exp(h).sum(dim=1, keepdim=True))
    expected = -(x * log_p).sum(dim=1).mean()
    torch.testing.assert_close(model.training_loss(batch), expected)
    torch.testing.assert_close(model.score_batch(eval_batch(data)), h)


def test_multidae_drops_input_only_while_training() -> None:
    data = tiny_data()
    model = MultiDAE(MultiDAE.Config(hidden_dims=[6], latent_dim=3, dropout=0.5), data)
    batch = _user_batch(data)
    torch.manual_seed(0)
    a, b = model.training_loss(batch), model.training_loss(batch)
    assert not torch.allclose(a, b)  # a fresh dropout mask per step
    model.eval()
    torch.testing.assert_close(model.training_loss(batch), model.training_loss(batch))


# --------------------------------------------------------------------------- RecVAE


def _normal_pdf(z: float, mu: float, var: float) -> float:
    return math.exp(-((z - mu) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)


def test_recvae_composite_prior_is_the_three_gaussian_mixture() -> None:
    data = tiny_data()
    model = RecVAE(RecVAE.Config(hidden_dim=8, latent_dim=3, num_layers=2), data)
    x = _user_batch(data)["history"][:3]
    z = torch.randn(3, 3, generator=torch.Generator().manual_seed(1)) * 2
    old_mu, old_logvar = model.old_encoder(x, 0.0)
    got = model.log_prior(x, z)
    w = [3 / 20, 3 / 4, 1 / 10]
    for b in range(3):
        for j in range(3):
            zz, m, v = float(z[b, j]), float(old_mu[b, j]), math.exp(float(old_logvar[b, j]))
            density = (
                w[0] * _normal_pdf(zz, 0, 1)
                + w[1] * _normal_pdf(zz, m, v)
                + w[2] * _normal_pdf(zz, 0, math.e**10)
            )
            assert float(got[b, j]) == pytest.approx(math.log(density), rel=1e-5)


def test_recvae_kl_weight_is_gamma_times_history_size_and_loss_formula() -> None:
    data = tiny_data()
    model = RecVAE(RecVAE.Config(hidden_dim=8, latent_dim=3, num_layers=2, gamma=0.01), data).eval()
    batch = _user_batch(data)
    x = batch["history"]
    torch.testing.assert_close(model.kl_weights(x), 0.01 * x.sum(dim=1))
    assert (x.sum(dim=1) == 4).all()  # tiny_data: 4 items a user
    mu, logvar = model.encoder(x, 0.0)  # eval: z = mu
    log_q = (-0.5 * (logvar + math.log(2 * math.pi))).sum(dim=1)  # log q(mu | x)
    kl = log_q - model.log_prior(x, mu).sum(dim=1)
    nll = -(torch.log_softmax(model.decoder(mu), dim=1) * x).sum(dim=1).mean()
    torch.testing.assert_close(model.training_loss(batch), nll + (0.04 * kl).mean())
    constant = RecVAE(RecVAE.Config(hidden_dim=8, latent_dim=3, num_layers=2, gamma=0.0, beta=0.3), data)
    torch.testing.assert_close(constant.kl_weights(x), torch.full((x.shape[0],), 0.3))


def test_recvae_noise_std_scales_the_training_sample_around_the_mean() -> None:
    """z = mu + noise_std * eps * sigma: with noise_std 0 training samples the mean exactly, and
    the spread of z - mu grows with noise_std (default 0.01, RecBole's; the paper's 1)."""
    data = tiny_data()
    assert RecVAE.Config().noise_std == 0.01
    x = _user_batch(data)["history"]

    def spread(noise_std: float) -> float:
        torch.manual_seed(0)
        model = RecVAE(RecVAE.Config(hidden_dim=8, latent_dim=3, num_layers=2, noise_std=noise_std), data)
        model.train()
        mu, logvar = model.encoder(x, 0.0)
        torch.manual_seed(1)
        z = reparameterize(mu, logvar, True, model.config.noise_std)
        return float((z - mu).abs().mean())

    assert spread(0.0) == 0.0
    assert 0 < spread(0.01) < spread(1.0)
    assert spread(0.01) == pytest.approx(0.01 * spread(1.0), rel=1e-4)


def test_recvae_contract_is_three_encoder_passes_then_one_decoder_pass() -> None:
    data = tiny_data()
    contract = RecVAE.data_contract(RecVAE.Config())
    assert contract.alternate == "epoch"
    assert [(i.name, i.optimizer, i.loss_method()) for i in contract.inputs] == [
        ("main", "encoder", "training_loss"),
        ("encoder_2", "encoder", "training_loss"),
        ("encoder_3", "encoder", "training_loss"),
        ("decoder", "decoder", "decoder_loss"),
    ]
    views = {i.name: build_view(i.view, data, 4, 0) for i in contract.inputs}
    order = [b["input"] for b in InputMix(views, contract.alternate)]
    per_pass = len(views["main"])
    assert order == sum(([name] * per_pass for name in views), [])
    two = RecVAE.data_contract(RecVAE.Config(n_enc_epochs=1, n_dec_epochs=2))
    assert [i.name for i in two.inputs] == ["main", "decoder", "decoder_2"]


def _snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(module: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return any(not torch.equal(p, q) for p, q in zip(module.parameters(), before))


def test_recvae_encoder_passes_move_only_the_encoder_and_decoder_passes_only_the_decoder() -> None:
    data = tiny_data()
    model = RecVAE(RecVAE.Config(hidden_dim=8, latent_dim=3, num_layers=2), data)
    optimizers = model.configure_optimizers()
    model._step_optimizers = dict(zip(model.data_needs.optimizers, optimizers))
    model._plain_step = True
    groups = model.optimizer_groups()
    assert {id(p) for p in groups["encoder"]} == {id(p) for p in model.encoder.parameters()}
    assert not any(p.requires_grad for p in model.old_encoder.parameters())
    batch = _user_batch(data)
    model.train()
    for name in ("main", "encoder_2", "encoder_3"):
        enc, dec, old = _snapshot(model.encoder), _snapshot(model.decoder), _snapshot(model.old_encoder)
        model.training_step({**batch, "input": name}, 0)
        assert _changed(model.encoder, enc) and not _changed(model.decoder, dec)
        assert not _changed(model.old_encoder, old)  # the prior is refreshed after the encoder passes
    enc, dec = _snapshot(model.encoder), _snapshot(model.decoder)
    model.training_step({**batch, "input": "decoder"}, 0)
    assert _changed(model.decoder, dec) and not _changed(model.encoder, enc)
    for p, q in zip(model.old_encoder.parameters(), model.encoder.parameters()):
        torch.testing.assert_close(p, q)  # q_old is the encoder after its passes


def test_recvae_rejects_mixture_weights_that_do_not_sum_to_one() -> None:
    with pytest.raises(ConfigError, match="model.mixture_weights"):
        RecVAE.Config(mixture_weights=[0.5, 0.5, 0.5]).validate()


# --------------------------------------------------------------------------- CDAE


def test_cdae_user_node_changes_scores_per_user() -> None:
    data = tiny_data()
    model = CDAE(CDAE.Config(embed_dim=5), data)
    history = torch.zeros(2, data.num_items, dtype=torch.bool)
    history[:, [1, 2, 3]] = True  # two users with the same history
    batch = {"user": torch.tensor([1, 2]), "history_mask": history}
    scores = model.score_batch(batch)
    assert not torch.allclose(scores[0], scores[1])
    with torch.no_grad():
        model.user_node.weight[2] = model.user_node.weight[1]
    scores = model.score_batch(batch)
    torch.testing.assert_close(scores[0], scores[1])


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_cdae_loss_is_summed_reconstruction_plus_penalty(loss: str) -> None:
    data = tiny_data()
    config = CDAE.Config(embed_dim=5, loss=loss, reg_weight=0.1, reg_l1=0.01, hid_activation="tanh")
    model = CDAE(config, data).eval()  # no corruption
    batch = _user_batch(data)
    x, users = batch["history"], batch["user"]
    h = torch.tanh(x @ model.encoder.weight.T + model.encoder.bias + model.user_node.weight[users])
    logits = h @ model.decoder.weight.T + model.decoder.bias
    if loss == "bce":
        p = torch.sigmoid(logits)
        rec = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum()
    else:
        rec = ((torch.sigmoid(logits) - x) ** 2).sum()
    v, w = model.user_node.weight, model.encoder.weight
    penalty = 0.1 * (v.pow(2).sum().sqrt() + w.pow(2).sum().sqrt()) + 0.01 * (v.abs().sum() + w.abs().sum())
    torch.testing.assert_close(model.training_loss(batch), rec + penalty, rtol=1e-5, atol=1e-4)


def test_cdae_rejects_an_unknown_activation() -> None:
    with pytest.raises(ConfigError, match="model.hid_activation"):
        CDAE.Config(hid_activation="gelu").validate()  # type: ignore[arg-type]


# --------------------------------------------------------------------------- MacridVAE


def test_macridvae_mixture_equals_a_loop_over_concepts() -> None:
    data = tiny_data()
    config = MacridVAE.Config(hidden_dims=[6], embed_dim=4, kfac=3, tau=0.5)
    model = MacridVAE(config, data).eval()
    batch = _user_batch(data)
    x = batch["history"]
    items = F.normalize(model.item_emb, dim=1)
    cores = F.normalize(model.concepts, dim=1)
    cates = torch.softmax(items @ cores.T / 0.5, dim=1)
    probs = torch.zeros_like(x)
    kl = torch.zeros(())
    for k in range(3):  # RecBole's loop, with the latent means at evaluation
        out = model.encoder(F.normalize(x, dim=1) * cates[:, k])
        mu, logvar = F.normalize(out[:, :4], dim=1), -out[:, 4:]
        probs = probs + torch.exp(F.normalize(mu, dim=1) @ items.T / 0.5) * cates[:, k]
        kl = kl + (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(dim=1)).mean()
    torch.testing.assert_close(model.score_batch(eval_batch(data)), torch.log(probs), rtol=1e-5, atol=1e-5)
    nll = -(torch.log_softmax(torch.log(probs), dim=1) * x).sum(dim=1).mean()
    model.anneal_step.fill_(100)  # beta = min(0.2, 100 / 200) = 0.2
    torch.testing.assert_close(model.training_loss(batch), nll + 0.2 * kl, rtol=1e-5, atol=1e-5)


def test_macridvae_samples_concepts_only_while_training() -> None:
    data = tiny_data()
    model = MacridVAE(MacridVAE.Config(hidden_dims=[6], embed_dim=4, kfac=3), data)
    items = F.normalize(model.item_emb, dim=1)
    sampled = model.concept_weights(items, sample=True)
    torch.testing.assert_close(sampled.sum(dim=1), torch.ones(data.num_items))
    assert not torch.allclose(sampled, model.concept_weights(items, sample=True))
    torch.testing.assert_close(model.concept_weights(items, False), model.concept_weights(items, False))
    model.config.nogb = True
    torch.testing.assert_close(model.concept_weights(items, True), model.concept_weights(items, False))
