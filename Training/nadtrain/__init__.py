"""Training pipeline for Not-a-Diagnosis (imports notadiagnosis; nothing imports it)."""
