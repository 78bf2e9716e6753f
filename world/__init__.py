"""The offline worlds divcfg builds for itself (procedural tones, real music rendered from music21), their stages and
`divcfg world`. May import the roles, model/, codec/ and common/.
"""
