"""``leakage sweep``: the attack over a grid of defense strengths (with each defense's breaking
point), and studies over any ``fit`` config key (batch size, dataset, model, steps, ...).

A sweep config is a ``fit`` config (trainer, model, data: the attack and its victims) plus a
``sweep`` section with ``defenses``, ``studies`` or both::

    sweep:
      output: logs/defense_sweep      # everything lands here
      success_ssim: 0.6               # a victim is reconstructed at its kind's score >= this
                                      # (images: SSIM; tables: TabLeak's accuracy over its records)
      target_success: 0.1             # a defense holds when the success rate is <= this
      refine: 3                       # bisection steps between the last leaking and first holding value
      batch: true                     # defense cells that share the attack run as one fit (false: one fit per cell)
      defenses:
        - name: noise
          class_path: leakage.federated.defenses.GaussianNoise
          param: sigma                # the strength parameter, swept over `values`
          values: [0, 0.01, 0.1, 0.5, 1.0]
          stronger: larger            # larger values defend more ("smaller" for top-k keep ratios)
          init_args: {relative: false}
      studies:
        - name: cifar10               # names the cells (cifar10.batch_size=4), the table and the plot
          key: data.batch_size        # a dotted path into the fit config, swept over `values`
          values: [1, 2, 4, 8, 16]    # run in this order; YAML types are kept (ints stay ints)
          set: {data.source.init_args.dataset: cifar10}  # optional: fixed dotted-key settings of this study
          per_value:                  # optional: extra dotted-key settings for single values
            2: {data.num_victims: 10}
          label: B                    # optional: the value column's header (default: B for a
                                      # batch size, else the key)

A defense cell adds the defense as the last of ``trainer.callbacks``; the sweep searches each
defense's breaking point. A study cell is the base config with, in this order, the study's ``set``,
``key: value`` and ``per_value[value]`` applied (setting a dotted key creates the sections it
needs; the value replaces what was there); studies run their grid only (no search). Fit options
given on the command line apply to every cell and take precedence over all of these (one that
sets a study's swept key is refused); ``--trainer.logger...`` options are not used (said once):
every cell logs to its own ``runs/<cell>/``.

Every cell is a ``fit`` run in ``output/runs/<cell>/`` (TensorBoard events, metrics, gallery),
named after its value's shortest text that reads back as the same float (``noise=0.01``,
``noise=0.004666412345678901``: distinct values never share a cell);
its summary (metrics, ``exact``: the victims a closed-form attack proved exact, by the certificate of
:mod:`leakage.attacks.closedform`, ``time_s``: the fit's wall time, ``entries_per_unknown``: gradient entries
per unknown input value) is written atomically to ``output/cells/<cell>.json`` when it completes.

With ``batch: true`` (the default) the sweep is one batched attack: the defense cells it needs
next (every defense's grid first, then each bisection round's new values, all defenses at once)
whose configs differ only in their defense are solved together, as problems of one fit
(cells x victims x restarts), each cell with its own defended gradients; every problem starts as
in its cell's own fit and is solved on its own, so results agree with one fit per cell up to
float32 rounding. Each cell still gets its own ``runs/<cell>/`` (written by its own report, its
victims only; its curves run to the step the shared fit ended at) and cell file, with ``time_s``
the shared fit's wall time divided by its cells, ``group_time_s`` that wall time and
``group_cells`` the cells that shared it. Study cells, and secure aggregation of whole updates
(``target: aggregate``, which changes the updates' number and size), run as fits of their own.
A cell whose defense fails on the updates fails alone; if the shared fit fails, or runs on
several processes (``strategy ddp``), its cells run again one by one. An interrupted shared fit has written none of its cells: they run again.
A cell that cannot run (a bad setting, an unknown config key) is recorded as failed with a
one-line error. A sweep started again skips completed cells and redoes interrupted ones, so it
never loses or corrupts what it wrote. Tables (``results.csv``, ``results.md``), one plot per
defense and per study (``<name>.png``) and the TensorBoard hparams view are rebuilt from the cell
files after every cell; they show the metrics of the cells' kind of data (a cell records its
kind's name; :attr:`~leakage.data.kinds.DataKind.summary_metrics`: images MSE, SSIM, PSNR; tables
TabLeak's accuracy overall, categorical and continuous).

A sweep config is data, checked before anything runs:

- only the keys above: a misspelt one (``outptu``, ``strongr``) is an error that lists the allowed keys;
- a defense's ``class_path`` is one of the package's defenses, by short name (``GaussianNoise``,
  ``NormClip``, ``DPGaussian``, ``TopK``, ``SecureAggregation``) or by its path inside the package
  (``leakage.federated.defenses.TopK``); nothing else is imported or run, and ``init_args`` holds arguments
  of that class only;
- ``values`` are finite numbers, no two of one grid within 1e-6 of each other, relative (they are
  one setting; the bisection stops, and says so, when its next value would be that close to an
  end); ``success_ssim`` is in [0, 1], ``target_success`` in [0, 1),
  ``refine`` a whole number >= 0, ``batch`` true or false;
- defense and study names use letters, digits, '_' and '-' only (starting with a letter or digit,
  at most 64 characters, unique ignoring case): they name files, and nothing is written or deleted
  outside ``output``.

One sweep at a time writes to an output folder: it holds ``output/sweep.lock`` (its pid and host)
while it runs and removes it when it ends; a second sweep there is refused. A lock left by a process
that no longer runs on this host is taken over.
"""

# The package's parts: config (reading and checking the sweep section), cells (running and
# resuming cells), fitargs (a cell's fit options and its one-line error), batching (defense cells as problems of one fit), search (breaking points, in
# rounds), tables, plots, hparams, paths (cell names and the
# only way to build a path under the output), lock (one sweep per output folder)
# and command (`leakage sweep`'s arguments). They use the engine (leakage.fit, leakage.engine.errors,
# leakage.reporting.callbacks, leakage.records, leakage.federated.defenses), never leakage.cli, which imports this package.
from leakage.sweep.cells import Sweep
from leakage.sweep.command import main, parse

__all__ = ["Sweep", "main", "parse"]
