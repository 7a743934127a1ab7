"""Jobs: train, evaluate, quantize, prune, distill, export — each a subprocess.

The contract job bodies implement lives in :mod:`maas.jobs.base`; the runner
that queues, starts, follows and cancels them in :mod:`maas.jobs.runner`.
"""
