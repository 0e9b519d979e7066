//! What an agent sends the server on its stream: the protobuf `AgentMessage` and the JSON payloads
//! inside it (status updates, container-network requests), decoded as the server decodes them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tug_proto::{AgentMessage, agent_message};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = AgentMessage::decode(data) else { return };
    match m.msg {
        Some(agent_message::Msg::StatusUpdate(bytes)) => {
            let _ = serde_json::from_slice::<tug_core::protocol::StatusUpdate>(&bytes);
        }
        Some(agent_message::Msg::NetRequest(bytes)) => {
            let _ = serde_json::from_slice::<tug_net::protocol::NetRequest>(&bytes);
        }
        _ => {}
    }
});
