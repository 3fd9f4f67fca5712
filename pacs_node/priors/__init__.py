"""Follow-up CT: find the prior study of a completed study, fetch it, record it, look it up again.

:mod:`~pacs_node.priors.query` asks a source (C-FIND), :mod:`~pacs_node.priors.retrieve`
fetches the prior (C-GET or C-MOVE) into the spool, :mod:`~pacs_node.priors.lookup` does
both for one job and :mod:`~pacs_node.priors.job` time-boxes it around the analysis; when the
prior was unavailable, :mod:`~pacs_node.priors.recheck` says when the re-report job of
:mod:`~pacs_node.priors.job` looks it up again.
"""
