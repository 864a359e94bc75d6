"""The adaptation loop: from a retrain event to a published, validated model, and its evaluation.

``retraining`` (the retrain worker), ``history`` (recent readings from the ticks topic),
``challenger`` (the fine-tuned model against the serving one on held-back data), ``registry``
(immutable versions, an atomic ``CURRENT``), ``online_eval`` (the loop in-process: frozen vs
drift-triggered vs periodic retraining). Fine-tuning itself is ``models.finetuning`` (torch),
imported only when a retrain runs.

May import: ``core``, ``kafka``, ``offline``, the top-level ``settings`` and ``assembly``; never
``tools`` or the CLI.
"""
