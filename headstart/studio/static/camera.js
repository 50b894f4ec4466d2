// The webcam, shared by the Collect and Try tabs: one stream, frames captured as JPEG blobs.

import { h } from "./ui.js";

class Camera {
  constructor() {
    this.video = h("video", { class: "camera-video", autoplay: true, muted: true, playsinline: true,
      "aria-label": "Camera preview" });
    this.video.muted = true;
    this.canvas = document.createElement("canvas");
    this.stream = null;
    this.listeners = new Set();
  }

  get running() { return Boolean(this.stream); }

  onChange(fn) { this.listeners.add(fn); return () => this.listeners.delete(fn); }

  notify() { for (const fn of this.listeners) fn(this.running); }

  async start() {
    if (this.stream) return;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw Object.assign(new Error("This browser gives no camera access here"),
        { hint: "open the studio at http://127.0.0.1 (a secure address) in a current browser" });
    }
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
    } catch (err) {
      const why = { NotAllowedError: "Camera access was refused", NotFoundError: "No camera was found",
        NotReadableError: "The camera is in use by another program" }[err.name] || `The camera could not start (${err.name})`;
      throw Object.assign(new Error(why), { hint: "allow the camera for this page, or add images from files" });
    }
    this.video.srcObject = this.stream;
    try { await this.video.play(); } catch { /* autoplay with muted video is allowed; ignore a race */ }
    await new Promise((resolve) => {
      if (this.video.videoWidth) resolve();
      else this.video.addEventListener("loadedmetadata", resolve, { once: true });
    });
    this.notify();
  }

  stop() {
    if (!this.stream) return;
    for (const track of this.stream.getTracks()) track.stop();
    this.stream = null;
    this.video.srcObject = null;
    this.notify();
  }

  // One frame as a JPEG (at most maxSide pixels on the long side).
  capture(maxSide = 640, quality = 0.9) {
    if (!this.stream || !this.video.videoWidth) return Promise.reject(new Error("The camera is not on"));
    const { videoWidth: w, videoHeight: hgt } = this.video;
    const scale = Math.min(1, maxSide / Math.max(w, hgt));
    this.canvas.width = Math.round(w * scale);
    this.canvas.height = Math.round(hgt * scale);
    this.canvas.getContext("2d").drawImage(this.video, 0, 0, this.canvas.width, this.canvas.height);
    return new Promise((resolve, reject) => this.canvas.toBlob(
      (blob) => (blob ? resolve(blob) : reject(new Error("Could not capture a frame"))), "image/jpeg", quality));
  }
}

export const camera = new Camera();

// A "hold to record" button: captures `fps` frames a second while pressed (pointer or Space/Enter).
export function holdButton(label, fps, onFrame, onStop) {
  const button = h("button", { type: "button", class: "hold", "aria-pressed": "false" }, label);
  let timer = null;
  let busy = false;
  const start = () => {
    if (timer || !camera.running) return;
    button.setAttribute("aria-pressed", "true");
    button.classList.add("recording");
    const tick = async () => {
      if (busy) return;
      busy = true;
      try { await onFrame(); } finally { busy = false; }
    };
    tick();
    timer = setInterval(tick, 1000 / fps);
  };
  const stop = () => {
    if (!timer) return;
    clearInterval(timer);
    timer = null;
    button.setAttribute("aria-pressed", "false");
    button.classList.remove("recording");
    if (onStop) onStop();
  };
  button.addEventListener("pointerdown", (e) => { e.preventDefault(); button.setPointerCapture(e.pointerId); start(); });
  button.addEventListener("pointerup", stop);
  button.addEventListener("pointercancel", stop);
  button.addEventListener("lostpointercapture", stop);
  button.addEventListener("keydown", (e) => {
    if ((e.key === " " || e.key === "Enter") && !e.repeat) { e.preventDefault(); start(); }
  });
  button.addEventListener("keyup", (e) => { if (e.key === " " || e.key === "Enter") { e.preventDefault(); stop(); } });
  button.addEventListener("blur", stop);
  return button;
}
