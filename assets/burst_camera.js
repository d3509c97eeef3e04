// A webcam burst for the Data page (an st.components.v2 component; pages/data.py mounts it).
// One click records `frames` frames spread over `seconds` seconds, and the whole burst goes to
// Python at once as JPEG data URLs (one trigger, one rerun), so a teacher clicks once, not once
// per frame. Nothing here loads anything from the network: the camera is the browser's own.

// Streamlit may call this function again with new data while the component stays mounted (the
// frame count changed); the camera and a recording in progress survive that, per host element.
const mounted = new WeakMap();

function setUp(root) {
  const video = root.querySelector("video");
  const button = root.querySelector("button");
  const status = root.querySelector(".status");
  const state = { data: {}, stream: null, recording: false, send: null, stopped: false };

  function say(text) {
    status.textContent = text;
  }

  function refresh() {
    const { frames, seconds, ready, hint } = state.data;
    button.textContent = `Record ${frames} frame${frames === 1 ? "" : "s"} over ${seconds} s`;
    button.disabled = !ready || !state.stream || state.recording;
    if (!state.recording && state.stream) say(ready ? "" : hint || "");
  }

  navigator.mediaDevices
    .getUserMedia({ video: true, audio: false })
    .then((stream) => {
      if (state.stopped) {
        stream.getTracks().forEach((t) => t.stop());
        return;
      }
      state.stream = stream;
      video.srcObject = stream;
      return video.play();
    })
    .then(() => refresh())
    .catch((err) => {
      say(`No camera: ${err && err.message ? err.message : err}. Allow the camera in the browser, or use single images.`);
    });

  function grab(canvas, context) {
    // at most 320 px wide: far above the model's input and small enough to send 60 of them
    const scale = Math.min(1, 320 / video.videoWidth);
    canvas.width = Math.round(video.videoWidth * scale);
    canvas.height = Math.round(video.videoHeight * scale);
    context.drawImage(video, 0, 0, canvas.width, canvas.height);
    return canvas.toDataURL("image/jpeg", 0.9);
  }

  async function record() {
    const { frames, seconds } = state.data;
    state.recording = true;
    refresh();
    const canvas = document.createElement("canvas");
    const context = canvas.getContext("2d");
    const gap = (seconds * 1000) / frames;
    const shots = [];
    const start = performance.now();
    try {
      for (let k = 0; k < frames && !state.stopped; k++) {
        // each frame at its own time from the start, so a slow frame does not stretch the burst
        const wait = start + k * gap - performance.now();
        if (wait > 0) await new Promise((done) => setTimeout(done, wait));
        shots.push(grab(canvas, context));
        say(`${shots.length} / ${frames} frames`);
      }
    } finally {
      state.recording = false;
    }
    if (!state.stopped && shots.length) {
      say(`${shots.length} / ${frames} frames: sending…`);
      state.send("frames", shots);
    }
    refresh();
  }

  button.addEventListener("click", () => {
    if (!state.recording) record();
  });

  return {
    update(data, send) {
      state.data = data;
      state.send = send;
      refresh();
    },
    stop() {
      state.stopped = true;
      if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
    },
  };
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  let burst = mounted.get(parentElement);
  if (!burst) {
    burst = setUp(parentElement);
    mounted.set(parentElement, burst);
  }
  burst.update(data, setTriggerValue);
  return () => {
    burst.stop();
    mounted.delete(parentElement);
  };
}
