// ES module entry of the callbox browser SDK: `import TRTC from '/trtc.mjs'`.
import './trtc.js';

const TRTC = globalThis.TRTC;
export default TRTC;
