"""The PESC thesis's scenario 4: torch.distributed.rpc with rank 0 the agent
and every other rank an observer (the pattern of PyTorch's distributed
reinforcement-learning tutorial). The agent holds a policy; each observer
runs an episode, asking the agent for an action at every step over RPC,
and reports its total reward. Submit as a parallel request:

    pesc submit agent_observer.py -n 3 --parallel --parameters 20

World size = repetitions; the number of steps per episode is the first
parameter (default 10).
"""
import argparse
import os

import torch
import torch.distributed.rpc as rpc

AGENT = "agent"


def observer_name(rank):
    return f"observer{rank}"


class Observer:
    def __init__(self, rank):
        self.rank = rank
        self.gen = torch.Generator().manual_seed(rank)

    def run_episode(self, agent_rref, steps):
        state = torch.zeros(4)
        total = 0.0
        for _ in range(steps):
            action = agent_rref.rpc_sync().select_action(self.rank, state)
            state = state + 0.1 * action + 0.01 * torch.rand(4, generator=self.gen)
            total += float(state.sum())
        return total


class Agent:
    def __init__(self, world):
        torch.manual_seed(0)
        self.rref = rpc.RRef(self)
        self.policy = torch.nn.Linear(4, 4)
        self.calls = 0
        self.observers = [
            rpc.remote(observer_name(r), Observer, args=(r,)) for r in range(1, world)
        ]

    def select_action(self, rank, state):
        self.calls += 1
        with torch.no_grad():
            return torch.tanh(self.policy(state))

    def run(self, steps):
        futures = [o.rpc_async().run_episode(self.rref, steps) for o in self.observers]
        return [f.wait() for f in futures]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rank", type=int, default=int(os.environ.get("RANK", 0)))
    p.add_argument("--world_size", type=int, default=int(os.environ.get("WORLD_SIZE", 1)))
    p.add_argument("--output_dir", default=os.environ.get("PESC_OUTPUT_DIR", "."))
    p.add_argument("--parameters", nargs="*", default=[])
    args, _ = p.parse_known_args()
    steps = int(args.parameters[0]) if args.parameters else 10
    name = AGENT if args.rank == 0 else observer_name(args.rank)
    # TCP only: each rank runs in its own sandbox, which keeps other runs'
    # shared memory and abstract UNIX sockets out of reach, so TensorPipe's
    # same-machine transports (shm, cma) fail with "Operation not permitted"
    # when two ranks share a desktop.
    opts = rpc.TensorPipeRpcBackendOptions(
        rpc_timeout=120, _transports=["uv"], _channels=["basic"]
    )
    rpc.init_rpc(name, rank=args.rank, world_size=args.world_size, rpc_backend_options=opts)
    out = os.path.join(args.output_dir, "output.txt")
    if args.rank == 0:
        agent = Agent(args.world_size)
        rewards = agent.run(steps)
        with open(out, "w") as f:
            f.write(
                f"agent: {len(rewards)} observers, {steps} steps each, "
                f"{agent.calls} actions chosen, rewards "
                + " ".join(f"{r:.3f}" for r in rewards)
                + "\n"
            )
    else:
        with open(out, "w") as f:
            f.write(f"observer {args.rank} served\n")
    rpc.shutdown()


if __name__ == "__main__":
    main()
