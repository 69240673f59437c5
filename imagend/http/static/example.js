// imagend's example web app (served at /example): upload, submit image-to-image, follow the stream.
"use strict";

const $ = (id) => document.getElementById(id);

function say(text) {
  $("status").textContent = text;
  $("log").textContent += text + "\n";
}

async function call(path, options) {
  const answer = await fetch(path, options);
  const body = await answer.json();
  if (!answer.ok) {
    throw new Error(`${path}: ${answer.status} ${body.error || ""}`);
  }
  return body;
}

function follow(id) {
  const stream = new EventSource(`/v1/images/${id}/events`);
  stream.addEventListener("status", (event) => {
    const state = JSON.parse(event.data);
    say(`image ${id}: ${state.status}` + (state.progress != null ? ` (${Math.round(state.progress * 100)} %)` : ""));
    if (state.progress != null) {
      $("progress").value = state.progress;
    }
  });
  stream.addEventListener("preview", (event) => {
    const preview = JSON.parse(event.data);
    $("preview").src = preview.url;
    $("preview").hidden = false;
  });
  stream.addEventListener("end", (event) => {
    const end = JSON.parse(event.data);
    stream.close();
    if (end.status === "ReadyToPublish") {
      $("progress").value = 1;
      $("result").src = end.image_url;
      $("result").hidden = false;
      $("preview").hidden = true;
      say(`image ${id} is ready`);
    } else {
      say(`image ${id} failed: ${end.error}`);
    }
  });
  stream.addEventListener("gone", () => {
    stream.close();
    say(`image ${id} is gone`);
  });
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  const photo = $("photo").files[0];
  const auth = { Authorization: `Bearer ${token}` };
  $("submit").disabled = true;
  $("result").hidden = true;
  try {
    say(`uploading ${photo.name} (${photo.size} bytes)`);
    const upload = await call("/v1/uploads", {
      method: "POST", headers: { ...auth, "Content-Type": photo.type || "application/octet-stream" }, body: photo,
    });
    say(`uploaded as ${upload.id} (${upload.width}x${upload.height} ${upload.format})`);
    const request = {
      prompt: $("prompt").value, init_image_id: upload.id, strength: Number($("strength").value),
    };
    const row = await call("/v1/images", {
      method: "POST",
      headers: { ...auth, "Content-Type": "application/json", "Idempotency-Key": crypto.randomUUID() },
      body: JSON.stringify(request),
    });
    say(`queued as image ${row.id}`);
    follow(row.id);
  } catch (error) {
    say(String(error.message || error));
  } finally {
    $("submit").disabled = false;
  }
});
