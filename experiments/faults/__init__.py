"""Every known fault run against the real launchers (``fault_matrix``, its cases in ``fault_cases``)."""
