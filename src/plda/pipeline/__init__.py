"""The pipeline steps as plain functions of a :class:`~plda.config.schema.RunConfig`.

Each ``plda`` sub-command of the pipeline is a thin wrapper over one function here, so a
script can run ``train_stage1(cfg)``, ``make_cams(cfg)``, ... with the same options.
"""
