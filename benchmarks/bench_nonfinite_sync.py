"""Cost of the ranks' agreement on a non-finite loss: train_epoch on two gloo ranks (simplenet_mnist,
32 samples per rank, 50 steps, 5 repetitions) with stop_on_nonfinite on (one all_reduce of the
step's losses) and off; prints the median ms per step. Run:

    OMP_NUM_THREADS=1 python -m torch.distributed.run --nproc_per_node 2 \
        benchmarks/bench_nonfinite_sync.py .
"""
import os, sys, time, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
from compressor.distributed import ElasticDDP, init_from_env
from compressor.models import create_model
from compressor.training import train_epoch
env = init_from_env(cpu=True)
torch.manual_seed(0)
model = create_model("simplenet_mnist")
ddp = ElasticDDP(model)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
g = torch.Generator().manual_seed(env.rank)
data = [(torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(50)]
crit = torch.nn.CrossEntropyLoss()
res = {True: [], False: []}
for rep in range(5):
    for flag in (True, False):
        dist.barrier(); t = time.perf_counter()
        train_epoch(ddp, data, crit, opt, 0, stop_on_nonfinite=flag)
        res[flag].append((time.perf_counter() - t) / 50 * 1e3)
if env.rank == 0:
    for flag in (True, False):
        v = sorted(res[flag]); print(f"stop_on_nonfinite={flag}: median {v[2]:.2f} ms/step (min {v[0]:.2f}, max {v[-1]:.2f})", flush=True)
dist.barrier(); dist.destroy_process_group(); os._exit(0)
