"""Knowledge distillation of a teacher into a device-sized student (imports torch; not imported by ``acula_edge``).

Modules, in pipeline order:

- :mod:`~acula_edge.distill.students` — ``DSCNNStudent`` (tiny / small / base presets), parameter and MAC reports;
- :mod:`~acula_edge.distill.teachers` — teachers from a checkpoint folder, a transformers folder, a torch module
  or a file of precomputed outputs; ``teacher_outputs`` caches their per-window outputs, keyed by (recording id,
  window index) of :class:`acula_edge.windows.Windows`;
- :mod:`~acula_edge.distill.probe` — linear probes on frozen teacher embeddings (teachers without a task head);
- :mod:`~acula_edge.distill.losses` — ``DistillConfig`` and the embedding / KD / supervised losses;
- :mod:`~acula_edge.distill.augment` — ``AugmentConfig`` and the log-mel augmenter (incl. device EQ);
- :mod:`~acula_edge.distill.device_sim` — ``DeviceSimConfig``: waveform copies through simulated device chains;
- :mod:`~acula_edge.distill.adversary` — the site-adversarial head (gradient reversal) for cross-site training;
- :mod:`~acula_edge.distill.metrics` — recording-level AUROC, Se, Sp, MAcc;
- :mod:`~acula_edge.distill.train` — ``TrainConfig`` and ``train_student`` (single process or torchrun);
- :mod:`~acula_edge.distill.cli` — the ``acula-edge distill`` command.
"""
