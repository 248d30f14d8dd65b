"""vqfast.training: start_run (seed, threads, folder) and optimizer_step (clip, scheduler)."""
import torch

from vqfast.training import optimizer_step, start_run


def test_start_run_seeds_and_makes_the_folder(tmp_path):
    threads = torch.get_num_threads()
    try:
        g, out = start_run(tmp_path / "a" / "b", seed=7, threads=1)
        assert out.is_dir() and torch.get_num_threads() == 1
        a = (torch.rand(3), torch.rand(3, generator=g))
        g, _ = start_run(tmp_path / "a" / "b", seed=7)  # existing folder, threads unchanged
        assert torch.get_num_threads() == 1
        assert all(torch.equal(x, y) for x, y in zip(a, (torch.rand(3), torch.rand(3, generator=g))))
    finally:
        torch.set_num_threads(threads)


def test_optimizer_step_matches_the_manual_step():
    torch.manual_seed(0)
    nets = [torch.nn.Linear(4, 3) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    x = torch.randn(5, 4) * 100  # gradients far above the clip norm
    opts = [torch.optim.SGD(n.parameters(), lr=0.1) for n in nets]
    scheds = [torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5) for o in opts]
    for _ in range(2):
        optimizer_step(nets[0](x).square().sum(), opts[0], clip=1.0, scheduler=scheds[0])
        opts[1].zero_grad()
        nets[1](x).square().sum().backward()
        torch.nn.utils.clip_grad_norm_(nets[1].parameters(), 1.0)
        opts[1].step()
        scheds[1].step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert opts[0].param_groups[0]["lr"] == opts[1].param_groups[0]["lr"] == 0.025
    before = [p.clone() for p in nets[0].parameters()]
    optimizer_step(nets[0](x).sum(), opts[0])  # no clip, no scheduler
    assert any(not torch.equal(a, b) for a, b in zip(before, nets[0].parameters()))
    assert opts[0].param_groups[0]["lr"] == 0.025
