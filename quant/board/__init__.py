"""The board side: protocol, judge, budgets, session, virtual board, reports, firmware build."""
