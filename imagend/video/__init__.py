"""Video from the same queue (docs/video.md): a storyboard (storyboard.py, or script.py asking a chat
endpoint for one) becomes scene rows, whose stills compose.py animates, joins and encodes with ffmpeg at a
preset (presets.py), with offline narration (narration.py). What the daemon's loop runs is in
queue/videos.py; this folder knows nothing of the database."""
