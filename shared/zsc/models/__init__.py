"""Model zoo: profiles name the concrete models; factories build them (tiny, seeded) or load real weights."""
