"""Explain: what each head does next to its SAP penalty, with figures."""
