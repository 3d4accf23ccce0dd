//! What every stage shares: AdamW + schedules, clipping, accumulation, checkpoint/resume,
//! metrics. Not built yet: see issue 4.
